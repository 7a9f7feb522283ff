"""A session's counters survive a restart of the process: `/v1/sessions/{name}` then says what
its manifest says (uploaded, bytes_uploaded, failed, dismissed), read back from the ledger and
the parked files, which are durable; and a file found already uploaded after a restart is not
counted twice."""

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.sessions.session import Session
from tests.support.helpers import Azurite, ServiceProcess, make_settings, wait_for, write_file


def _view(service: ServiceProcess, name: str) -> dict[str, Any]:
    with service.client as api:
        return api.get(f"/v1/sessions/{name}").json()


def _manifest(azurite: Azurite, container: str, date: str, name: str) -> dict[str, Any] | None:
    blob = azurite.container(container).get_blob_client(f"{date}/{name}.manifest.json")
    return json.loads(blob.download_blob().readall()) if blob.exists() else None


def _session(service: ServiceProcess, incoming: Path, name: str, files: dict[str, bytes]) -> str:
    """Start `name`, write `files`, stop it; returns its date."""
    with service.client as api:
        date = api.post("/v1/watch/start", json={"session_name": name}).json()["date_prefix"]
        for rel, data in files.items():
            write_file(incoming / name / rel, data)
        wait_for(
            lambda: (v := _view(service, name))["uploaded"] + v["failed"] == len(files),
            what=f"{name}'s files up or parked",
        )
        api.post("/v1/watch/stop")
    return date


def test_counters_after_a_restart_say_what_the_manifest_says(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(tmp_path, azurite, container_name, drain_timeout_s=1.0)
    service = ServiceProcess(settings, tmp_path / "service.log")
    service.start()
    try:
        incoming = settings.nfs_incoming_dir
        dates = {
            "clean": _session(
                service, incoming, "clean", {"a.bin": b"a" * 1000, "sub/b.bin": b"b" * 5000}
            ),
            # "bad." is a name Azure refuses: parked; the session times out draining.
            "mixed": _session(service, incoming, "mixed", {"c.bin": b"c" * 700, "bad.": b"x"}),
        }
        manifests: dict[str, dict[str, Any]] = {}
        for name, date in dates.items():
            found = wait_for(
                lambda name=name, date=date: _manifest(azurite, container_name, date, name),
                what=f"{name}'s manifest",
            )
            assert found is not None
            manifests[name] = found
        before = {name: _view(service, name) for name in dates}
        assert service.signal(signal.SIGTERM) in (0, -signal.SIGTERM)
        service.start()
        for name, manifest in manifests.items():
            after = _view(service, name)
            totals = manifest["totals"]
            assert after["state"] == before[name]["state"] == manifest["state"]
            assert after["uploaded"] == totals["files"] == before[name]["uploaded"], after
            assert after["bytes_uploaded"] == totals["bytes"] == before[name]["bytes_uploaded"]
            assert after["failed"] == totals["parked"] == before[name]["failed"]
            assert after["files_seen"] == totals["files"] + totals["parked"]
        clean = manifests["clean"]["totals"]
        assert (clean["files"], clean["bytes"], clean["parked"]) == (2, 6000, 0)
        mixed = manifests["mixed"]["totals"]
        assert (mixed["files"], mixed["bytes"], mixed["parked"]) == (1, 700, 1)
    finally:
        if service.proc is not None:
            service.signal(signal.SIGTERM)


def test_a_file_found_already_uploaded_after_a_restart_is_counted_once() -> None:
    """Committed and recorded before a crash, not yet marked completed: the ledger counts it,
    and its upload after the restart finds it in storage."""
    session = Session("s", "20261204", "draining", 0.0)
    item = WorkItem("s", "20261204", "a.bin", claimed=True)
    session.restore(2, 300, 0, {"20261204/s/a.bin": 100}, dismissed=0)
    session.count_uploaded(item, 0)  # found already there: nothing sent
    assert (session.uploaded, session.bytes_uploaded) == (2, 300)
    late = WorkItem("s", "20261204", "b.bin", claimed=True)
    session.count_uploaded(late, 50)  # a file the ledger did not have
    assert (session.uploaded, session.bytes_uploaded) == (3, 350)


def test_a_dismissal_is_still_counted_after_a_restart(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """`dismissed` is read back from the ledger too: after a restart the session says what its
    manifest's totals say, as for the other counters."""
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "d"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "d" / "bad.", b"x")  # a name Azure refuses: parked
    write_file(settings.nfs_incoming_dir / "d" / "ok.bin", b"fine")
    wait_for(
        lambda: (v := running.get("/v1/sessions/d").json())["uploaded"] + v["failed"] == 2,
        what="ok.bin up and bad. parked",
    )
    running.post("/v1/watch/stop")
    assert running.client.delete("/v1/files/failed/d/bad.").status_code == 200

    def drained_manifest() -> dict[str, Any] | None:
        found = _manifest(azurite, settings.azure_container, date, "d")
        return found if found and found["state"] == "drained" else None

    manifest = wait_for(drained_manifest, what="the manifest after the dismissal")
    assert manifest is not None and manifest["totals"]["dismissed"] == 1
    before = running.get("/v1/sessions/d").json()
    running.stop()
    after = service_factory(settings).get("/v1/sessions/d").json()
    assert after["dismissed"] == manifest["totals"]["dismissed"] == before["dismissed"], after
    assert (after["uploaded"], after["failed"]) == (1, 0)


def _ended_session(running: Any, name: str) -> Path:
    """Start `name`, upload one file, stop it, wait until it drained and nothing of it is left
    on the share but its ledger; returns the path of that."""
    settings = running.settings
    date = running.post("/v1/watch/start", json={"session_name": name}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / name / "a.bin", b"a" * 10)
    wait_for(lambda: running.get(f"/v1/sessions/{name}").json()["uploaded"] == 1, what="a.bin")
    running.post("/v1/watch/stop")
    processing = settings.nfs_processing_root
    wait_for(
        lambda: (
            running.get(f"/v1/sessions/{name}").json()["state"] == "drained"
            and not any(p.is_file() for p in (processing / "_completed").rglob("*"))
        ),
        what=f"{name} drained, its completed file deleted",
    )
    return settings.nfs_processing_root / "_ledgers" / date / f"{name}.jsonl"


@pytest.mark.adversarial
def test_a_fifo_planted_as_a_ledger_never_holds_up_start_up_nor_a_thread(
    service_factory: Any, settings_factory: Any
) -> None:
    """Anyone who can write the share can put a FIFO where a session's ledger is: the counters'
    read-back at start-up opened it and waited for a writer, holding start-up for ten NFS
    deadlines and leaving a thread blocked for good (32 of them and every NFS call fails).

    Review of issues 19/20, finding 7.
    """
    settings = settings_factory(nfs_timeout_s=0.5)
    running = service_factory(settings)
    ledger = _ended_session(running, "fifo")
    running.stop()
    ledger.unlink()
    os.mkfifo(ledger)
    again = service_factory(settings)
    assert again.service.nfs.abandoned == 0
    assert again.get("/v1/sessions/fifo").json()["uploaded"] == 0


@pytest.mark.adversarial
def test_a_ledger_line_naming_another_sessions_blob_is_never_counted(
    service_factory: Any, settings_factory: Any
) -> None:
    """A line planted in a session's ledger that names a blob outside `<date>/<session>/`
    (another session's) is not this session's upload: counted after a restart, it made the
    session claim a file it never sent, and the manifest would list it.

    Review of issues 19/20, finding 8.
    """
    settings = settings_factory()
    running = service_factory(settings)
    ledger = _ended_session(running, "mine")
    running.stop()
    date = ledger.parent.name
    planted = {
        "blob": f"{date}/other/secret.bin",
        "path": "secret.bin",
        "size": 10**12,
        "md5": "00" * 16,
        "source_mtime": "2026-12-04T00:00:00Z",
        "uploaded_at": "2026-12-04T00:00:00Z",
    }
    with open(ledger, "a") as f:
        f.write(json.dumps(planted) + "\n")
    view = service_factory(settings).get("/v1/sessions/mine").json()
    assert (view["uploaded"], view["bytes_uploaded"]) == (1, 10)


@pytest.mark.adversarial
def test_a_link_planted_as_a_ledger_is_never_followed(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    """A symbolic link where a session's ledger is (to another session's ledger, or any file
    of the same shape elsewhere) is not this session's record: read back through it, the
    counters said what that file says.

    Review of issues 19/20, finding 9.
    """
    settings = settings_factory()
    running = service_factory(settings)
    ledger = _ended_session(running, "linked")
    running.stop()
    elsewhere = tmp_path / "elsewhere.jsonl"
    lines = ledger.read_text().splitlines()
    entry = json.loads(lines[0])
    elsewhere.write_text(
        "".join(
            json.dumps(entry | {"blob": f"{entry['blob']}.{n}", "path": f"x{n}"}) + "\n"
            for n in range(5)
        )
    )
    ledger.unlink()
    ledger.symlink_to(elsewhere)
    view = service_factory(settings).get("/v1/sessions/linked").json()
    assert view["uploaded"] == 0, view
