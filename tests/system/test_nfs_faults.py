"""On a faulty NFS (ESTALE, EIO, caching, stalls, on a FUSE layer) every file lands byte-exact,
once."""

import errno
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.config import Settings
from tests.support.cloud import wait_manifest
from tests.support.faultfs import Faults, fuse_available, mounted
from tests.support.helpers import (
    Azurite,
    RunningService,
    blob_bytes,
    leftover_files,
    make_settings,
    session_view,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available())),
]


@dataclass
class Nfs:
    backing: Path  # the server's disk: the recorder writes here
    mount: Path  # what the service sees
    faults: Faults

    def settings(self, root: Path, azurite: Azurite, container: str, **kw: Any) -> Settings:
        values: dict[str, Any] = {
            "nfs_incoming_dir": self.mount / "incoming",
            "nfs_processing_root": self.mount / ".processing",
            "local_staging_root": root / "staging",
            "min_file_age_s": 0.5,
            "nfs_timeout_s": 5.0,
        }
        values.update(kw)
        return make_settings(root, azurite, container, **values)

    def write(self, session: str, name: str, data: bytes) -> None:
        folder = self.backing / "incoming" / session
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _nfs(tmp_path: Path, seed: int, cache_s: float = 0.0) -> Iterator[Nfs]:
    faults = Faults(seed)
    with mounted(tmp_path / "server", tmp_path / "nfs", faults, cache_s=cache_s) as mount:
        yield Nfs(tmp_path / "server", mount, faults)


@pytest.fixture
def nfs(tmp_path: Path) -> Iterator[Nfs]:
    yield from _nfs(tmp_path, seed=7)


@pytest.fixture
def cached_nfs(tmp_path: Path) -> Iterator[Nfs]:
    yield from _nfs(tmp_path, seed=11, cache_s=2.0)


def _start(running: RunningService, name: str) -> str:
    """Start a session, retrying the 503s a flaky mount may cause."""

    def attempt() -> str | None:
        r = running.post("/v1/watch/start", json={"session_name": name})
        assert r.status_code in (200, 503), r.text
        return r.json()["date_prefix"] if r.status_code == 200 else None

    date = wait_for(attempt, timeout=30, interval=0.2, what="session start")
    assert date is not None
    return date


def test_estale_and_eio_lose_nothing(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    rng = random.Random(20261129)
    sizes = [0, 100, 4096, 64 * 1024, 700 * 1024, 1536 * 1024, 3 * 1024 * 1024]
    settings = nfs.settings(
        tmp_path,
        azurite,
        container_name,
        azure_max_block_size=1024 * 1024,
        azure_max_single_put_size=1024 * 1024,
        retry_max_s=0.5,
    )
    running = service_factory(settings)
    date = _start(running, "flaky")
    nfs.faults.estale, nfs.faults.eio = 0.04, 0.015
    expected: dict[str, bytes] = {}
    for i in range(300):
        data = rng.randbytes(rng.choice(sizes))
        expected[f"{date}/flaky/f{i:03d}.bin"] = data
        nfs.write("flaky", f"f{i:03d}.bin", data)
    container = azurite.container(container_name)
    wait_for(lambda: running.service.pipeline.stats.uploaded >= 300, timeout=240, interval=0.5)
    injected = dict(nfs.faults.injected)
    nfs.faults.estale = nfs.faults.eio = 0.0
    blobs = {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}
    wrong = {n: (len(blobs.get(n, b"")), len(d)) for n, d in expected.items() if blobs.get(n) != d}
    assert not wrong, f"(blob bytes, file bytes) differ: {wrong}"
    assert blobs.keys() == expected.keys()  # every file, byte-exact, and nothing else
    status = running.get("/v1/status").json()
    assert status["processed_ok"] == 300 and status["processed_err"] == 0  # none counted twice
    wait_for(lambda: not leftover_files(nfs.backing), timeout=30, what="nothing left behind")
    assert sum(v for k, v in injected.items() if k.endswith("ESTALE")) > 50
    assert sum(v for k, v in injected.items() if k.endswith("EIO")) > 5
    print(f"\nESTALE/EIO scenario: 300 files, injected {injected}, retries {status['retries']}")


def test_growing_files_behind_an_attribute_cache_are_never_claimed_early(
    cached_nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """Attributes cached 2 s (like actimeo=2): a growing file can look unchanged for 2 s.
    APP_MIN_FILE_AGE_S=3 is above that, so no file is claimed before it is whole."""
    nfs = cached_nfs
    settings = nfs.settings(
        tmp_path, azurite, container_name, min_file_age_s=3.0, poll_interval_s=0.2
    )
    running = service_factory(settings)
    date = _start(running, "grow")
    folder = nfs.backing / "incoming" / "grow"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = {f"g{i}.bin": [os.urandom(32 * 1024) for _ in range(14)] for i in range(4)}
    handles = {name: open(folder / name, "wb") for name in chunks}
    try:
        for burst in range(14):  # a burst every 0.3 s for about 4 s
            for name, parts in chunks.items():
                handles[name].write(parts[burst])
                handles[name].flush()
            time.sleep(0.3)
            assert all((folder / n).exists() for n in chunks), "claimed while still growing"
            assert running.service.pipeline.stats.uploaded == 0
    finally:
        for handle in handles.values():
            handle.close()
    container = azurite.container(container_name)
    for name, parts in chunks.items():
        data = wait_for(lambda n=name: blob_bytes(container, f"{date}/grow/{n}"), timeout=30)
        assert data == b"".join(parts), name
    # Counted once marked done, a moment after the commit (its ledger line comes between).
    wait_for(lambda: running.service.pipeline.stats.uploaded == 4, timeout=30)


def test_a_stalled_nfs_keeps_the_api_answering_and_recovers(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    settings = nfs.settings(
        tmp_path,
        azurite,
        container_name,
        nfs_timeout_s=1.0,
        liveness_timeout_s=5.0,
        retry_max_s=1.0,
    )
    running = service_factory(settings)
    date = _start(running, "stall")
    expected = {f"s{i:02d}.bin": os.urandom(20_000 + i) for i in range(80)}
    names = list(expected)
    for name in names[:40]:
        nfs.write("stall", name, expected[name])
    wait_for(lambda: running.service.pipeline.stats.uploaded >= 10, timeout=60)
    nfs.faults.stall()
    for name in names[40:]:  # the recorder keeps writing on the server meanwhile
        nfs.write("stall", name, expected[name])
    stall_s, slowest, codes = 12.0, 0.0, set()
    started = time.monotonic()
    while time.monotonic() - started < stall_s:
        for path in ("/healthz", "/readyz", "/v1/status"):
            t0 = time.monotonic()
            r = running.get(path)
            slowest = max(slowest, time.monotonic() - t0)
            if path == "/healthz":
                codes.add(r.status_code)
            else:
                assert r.status_code == 200, (path, r.text)
        time.sleep(0.2)
    assert slowest < 1.0, f"a probe took {slowest:.2f} s during the stall"
    assert 503 in codes, "a stall longer than the liveness deadline must turn /healthz to 503"
    nfs.faults.release()
    wait_for(lambda: running.get("/healthz").status_code == 200, timeout=30, what="healthz back")
    container = azurite.container(container_name)
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/stall/{n}") == d for n, d in expected.items()),
        timeout=90,
        interval=0.5,
    )
    # Counted once marked done, a moment after the commit (its ledger line comes between).
    wait_for(lambda: running.service.pipeline.stats.uploaded == 80, timeout=30)
    print(f"\nstall scenario: {stall_s:.0f} s stall, slowest probe {slowest * 1000:.0f} ms")


def test_session_start_and_stop_on_a_flaky_mount_never_answer_500(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    running = service_factory(nfs.settings(tmp_path, azurite, container_name))
    nfs.faults.estale = 0.3
    seen: dict[int, int] = {}
    for i in range(25):
        for r in (
            running.post("/v1/watch/start", json={"session_name": f"flaky-{i}"}),
            running.post("/v1/watch/stop"),
        ):
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code in (200, 409, 503), r.text
            if r.status_code == 503:
                assert "retry" in r.json()["detail"]
            if r.status_code == 409:  # a start refused because the last stop was a 503
                assert "already active" in r.json()["detail"]
    nfs.faults.estale = 0.0
    running.post("/v1/watch/stop")
    assert running.post("/v1/watch/start", json={"session_name": "steady"}).status_code == 200
    assert running.get("/healthz").status_code == 200
    assert seen.get(503, 0) > 0, seen  # the faults did reach the API
    print(f"\nflaky start/stop: {seen}, injected {dict(nfs.faults.injected)}")


def test_the_fault_layer_really_injects_errors_and_stalls(nfs: Nfs) -> None:
    (nfs.backing / "probe").write_bytes(b"x")
    nfs.faults.estale = 1.0
    with pytest.raises(OSError):
        os.stat(nfs.mount / "probe")
    nfs.faults.estale = 0.0
    nfs.faults.stall()
    done = threading.Event()
    threading.Thread(target=lambda: (os.listdir(nfs.mount), done.set()), daemon=True).start()
    assert not done.wait(0.5)
    nfs.faults.release()
    assert done.wait(5)


def _plant_parked(nfs: Nfs, date: str, session: str, count: int) -> None:
    """Files an earlier run parked, with their reasons, straight on the server's disk."""
    parked = nfs.backing / ".processing" / "_failed" / date / session
    reasons = nfs.backing / ".processing" / "_failed_reasons" / date / session
    parked.mkdir(parents=True)
    reasons.mkdir(parents=True)
    for i in range(count):
        name = f"rec{i:05d}.bin"
        (parked / name).write_bytes(b"kept")
        record = {"reason": "storage refused it", "rel": name, "at": 1_764_000_000.0}
        (reasons / name).write_text(json.dumps(record))


@pytest.mark.adversarial
def test_thousands_of_parked_files_on_a_slow_share_never_stop_listings_or_manifests(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """Listing parked files read every reason file in one NFS call under the plain deadline:
    past a few hundred parked files on a server a millisecond away (an earlier session's),
    the listing never finished: `/v1/files/failed` answered 503 for ever, and no session got
    its manifest (each manifest listed every parked file).

    Issue 21, finding 7.
    """
    count = 1500
    _plant_parked(nfs, "20261201", "earlier", count)
    nfs.faults.latency = 0.001  # every call to the server a millisecond away
    settings = nfs.settings(tmp_path, azurite, container_name, nfs_timeout_s=2.0)
    running = service_factory(settings)
    date = _start(running, "fresh")
    running.post("/v1/watch/stop")
    container = azurite.container(container_name)
    assert wait_manifest(container, date, "fresh")["complete"] is True
    with httpx.Client(base_url=running.base_url, timeout=120) as client:
        started = time.monotonic()
        first = client.get("/v1/files/failed")
        took = time.monotonic() - started
        assert first.status_code == 200, first.text
        assert len(first.json()["files"]) == count
        assert {f["reason"] for f in first.json()["files"]} == {"storage refused it"}
        started = time.monotonic()
        assert len(client.get("/v1/files/failed").json()["files"]) == count
        again = time.monotonic() - started
    assert running.service.nfs.abandoned == 0
    print(f"\n{count} parked files, 1 ms a call: listed in {took:.1f} s, again in {again:.2f} s")


@pytest.mark.adversarial
def test_one_file_nfs_cannot_describe_never_holds_up_the_others_or_the_drain(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """One entry whose stat fails with EIO (NFS on a damaged file) failed the whole scan of its
    session: no other file was taken, the stopped session could neither drain nor time out,
    and `/healthz` turned 503 (a restart loop that cannot help).

    Issue 21, finding 9.
    """
    settings = nfs.settings(
        tmp_path, azurite, container_name, drain_timeout_s=2.0, liveness_timeout_s=3.0
    )
    running = service_factory(settings)
    date = _start(running, "damaged")
    nfs.faults.broken["damaged.bin"] = errno.EIO
    for name in ("a.bin", "damaged.bin", "b.bin"):
        nfs.write("damaged", name, name.encode())
    container = azurite.container(container_name)
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/damaged/{n}") for n in ("a.bin", "b.bin")),
        timeout=20,
        what="the other files uploaded",
    )
    view = wait_for(
        lambda: (v := session_view(running, "damaged"))["unreadable"] == 1 and v,
        what="the damaged file reported",
    )
    assert "damaged.bin" in " ".join(view["notices"])
    running.post("/v1/watch/stop")
    ended = wait_for(
        lambda: (v := session_view(running, "damaged"))["state"] != "draining" and v,
        timeout=20,
        what="the session to end",
    )
    assert ended["state"] == "drain_timed_out"
    assert running.get("/healthz").status_code == 200
    assert blob_bytes(container, f"{date}/damaged/damaged.bin") is None


@pytest.mark.adversarial
def test_many_leftover_jobs_and_reasons_on_a_slow_share_never_stop_start_up(
    nfs: Nfs, tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """Start-up read every webhook job, and settled every reason left without its parked
    file, each in one NFS call under the plain deadline: past a few hundred of them on a
    server a millisecond away, the call never finished and the step was retried for ever
    (never ready; no event ever delivered).

    Found attacking issue 21's change.
    """
    processing = nfs.backing / ".processing"
    reasons = processing / "_failed_reasons" / "20261201" / "old"
    reasons.mkdir(parents=True)
    for i in range(300):  # their parked files were removed while the service was down
        (reasons / f"rec{i:03d}.bin").write_text(json.dumps({"reason": "refused"}))
    outbox = processing / "_outbox"
    outbox.mkdir()
    for i in range(600):
        event_id = f"00000000-0000-4000-8000-{i:012d}"
        event = {"id": event_id, "type": "file.parked", "data": {}}
        (outbox / f"{event_id}.json").write_text(
            json.dumps({"id": event_id, "created": 1.0 + i, "event": event})
        )
    nfs.faults.latency = 0.001
    settings = nfs.settings(
        tmp_path,
        azurite,
        container_name,
        nfs_timeout_s=1.0,
        webhook_url="http://127.0.0.1:9/hook",  # nothing listens: every event stays pending
    )
    running = service_factory(settings)  # ready within 30 s
    # Each one settled at start (a session no longer known dismisses nothing: set aside)
    assert not any(reasons.iterdir())
    set_aside = processing / "_set_aside" / "_failed_reasons" / "20261201" / "old"
    assert len(list(set_aside.iterdir())) == 300
    assert running.service.pipeline.stats.dismissed == 0
    wait_for(
        lambda: running.service.delivery.webhooks.pending == 600,
        timeout=60,
        what="the outbox loaded",
    )
