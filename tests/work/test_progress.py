"""Live progress: each file in flight shows its path, size, bytes sent, rate and step (the early
blocks of a large file counted while it is read, in their own tasks), a file waiting for its
next attempt shows when that is, and a session shows the bytes left and an ETA; all of it from
memory, and through `/v1/sessions/{name}` and `/v1/status` alike."""

import os
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import Azurite, RunningService, session_view, wait_for, write_file

MIB = 1024 * 1024


def _file(running: RunningService, session: str) -> dict[str, Any] | None:
    files = session_view(running, session)["files_in_flight"]
    return files[0] if files else None


def test_a_large_file_shows_its_bytes_rising_its_rate_and_an_eta(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """20 MiB under a 4 MiB/s cap: sent in blocks while it is read (early blocks, each in a task
    of its own): the bytes rise look after look, the rate is about the cap, the session has
    bytes left and an ETA; when it is up, the file is gone from the list and nothing is left."""
    settings: Settings = settings_factory(bandwidth_limit=4 * MIB)
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "big"})
    write_file(settings.nfs_incoming_dir / "big" / "cam" / "large.bin", os.urandom(20 * MIB))

    seen: list[dict[str, Any]] = []

    def moved_twice() -> bool:
        f = _file(running, "big")
        if f is not None and 0 < f["bytes_sent"] < f["size"]:
            seen.append(f)
        return len({s["bytes_sent"] for s in seen}) >= 3

    wait_for(moved_twice, timeout=30, interval=0.3, what="bytes sent rising")
    first, last = seen[0], seen[-1]
    assert first["path"] == "cam/large.bin" and first["size"] == 20 * MIB
    assert first["state"] in ("staging", "uploading") and first["attempt"] == 1
    assert last["bytes_sent"] > first["bytes_sent"]
    # Early blocks are sent from tasks the copy starts: their bytes count all the same.
    assert any(s["state"] in ("staging", "uploading") and s["bytes_sent"] > 0 for s in seen)
    view = session_view(running, "big")
    assert 0 < view["bytes_remaining"] < 20 * MIB
    rate = wait_for(lambda: session_view(running, "big")["rate_bytes_per_second"], interval=0.3)
    assert rate < 6 * MIB, rate
    eta = wait_for(lambda: session_view(running, "big")["eta_seconds"], interval=0.3)
    assert 0 < eta < 60
    status = running.get("/v1/status").json()
    assert status["files_in_flight_total"] == 1
    assert status["files_in_flight"][0]["path"] == "cam/large.bin"
    assert status["files_in_flight"][0]["rate_bytes_per_second"] > 0

    wait_for(lambda: session_view(running, "big")["uploaded"] == 1, timeout=60)
    view = session_view(running, "big")
    assert view["files_in_flight"] == [] and view["bytes_remaining"] == 0
    assert view["bytes_done"] == 20 * MIB and view["eta_seconds"] == 0
    assert running.get("/v1/status").json()["files_in_flight"] == []


def test_a_file_waiting_for_its_next_attempt_says_when_and_why(
    service_factory: Any, settings_factory: Any, own_azurite: Azurite, tmp_path: Path
) -> None:
    """Storage away: the file shows `retrying`, the number and time of its next attempt and the
    error; storage back: it goes up and leaves the list."""
    settings: Settings = settings_factory(
        azure_account_url=own_azurite.url,
        azure_connection_string=own_azurite.connection_string,
        retry_base_s=2.0,
        retry_max_s=4.0,
    )
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "away"})
    own_azurite.stop()
    write_file(settings.nfs_incoming_dir / "away" / "a.bin", b"a" * 1000)

    f: Any = wait_for(
        lambda: (f := _file(running, "away")) is not None and f["state"] == "retrying" and f,
        timeout=60,
        interval=0.2,
        what="a.bin retrying",
    )
    assert f["path"] == "a.bin" and f["attempt"] >= 2
    assert f["next_attempt_at"] is not None and 0 <= f["next_attempt_in_s"] <= 4.0
    assert f["last_error"]
    assert session_view(running, "away")["retrying"] == 1

    own_azurite.start()
    wait_for(lambda: session_view(running, "away")["uploaded"] == 1, timeout=60)
    assert _file(running, "away") is None
