"""Outages, a full disk, a hung NFS or a stall are ridden out; the service keeps answering and
every file lands."""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs.copying import Staged
from tests.support.faultfs import Faults, fuse_available, mounted
from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    wait_for,
    write_file,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def small_staging(tmp_path: Path) -> Iterator[Path | None]:
    """A 4 MiB tmpfs as the staging disk, where this runner may mount; else None."""
    mount = tmp_path / "staging"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        yield None
        return
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.adversarial
@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_exit_on_stall_ends_a_hung_process(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """For Docker/compose, which never restart an unhealthy container: APP_EXIT_ON_STALL_S.

    Finding adversary-13 (first adversarial review, issue 10).
    """
    faults = Faults(5)
    with mounted(tmp_path / "server", tmp_path / "nfs", faults) as mount:
        settings = make_settings(
            tmp_path,
            azurite,
            container_name,
            nfs_incoming_dir=mount / "incoming",
            nfs_processing_root=mount / ".processing",
            nfs_timeout_s=0.5,
            liveness_timeout_s=1.0,
            exit_on_stall_s=2.0,
        )
        proc = ServiceProcess(settings, tmp_path / "service.log")
        proc.start()
        with proc.client as c:
            assert c.post("/v1/watch/start", json={"session_name": "hang"}).status_code == 200
        faults.stall()
        try:
            wait_for(lambda: "APP_EXIT_ON_STALL_S" in proc.log.read_text(), timeout=30)
            # Threads blocked in a FUSE request cannot die until it is answered (a hard NFS
            # mount's can: NFS waits are killable), so the exit completes once FUSE answers.
            faults.release()
            assert proc.proc is not None
            code = proc.proc.wait(30)
        finally:
            faults.release()
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGKILL)
        assert code == 70, proc.log.read_text()[-2000:]


def test_a_storage_outage_is_ridden_out_without_restart(
    tmp_path: Path, own_azurite: Azurite, service_factory: Any
) -> None:
    settings = make_settings(tmp_path, own_azurite, "outage", retry_max_s=2.0)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "out"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "out"
    expected = {f"f{i:02d}": os.urandom(10_000 + i) for i in range(30)}
    names = list(expected)
    for name in names[:10]:
        write_file(incoming / name, expected[name])
    wait_for(lambda: running.service.pipeline.stats.uploaded == 10, timeout=30)
    own_azurite.stop()
    for name in names[10:]:
        write_file(incoming / name, expected[name])
    status = wait_for(
        lambda: (s := running.get("/v1/status").json())["retrying"] > 0 and s, timeout=30
    )
    assert status["last_error"]
    time.sleep(15)  # the outage itself: storage stays down this long
    assert running.get("/healthz").status_code == 200
    own_azurite.start()
    container = own_azurite.container("outage")
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/out/{n}") == expected[n] for n in names),
        timeout=60,
    )
    assert running.get("/v1/status").json()["retries"] > 0
    # Counted once marked done, a moment after the commit (its ledger line comes between).
    wait_for(lambda: running.service.pipeline.stats.uploaded == 30, timeout=30)


def test_a_full_staging_disk_waits_and_every_file_lands(
    tmp_path: Path,
    azurite: Azurite,
    container_name: str,
    service_factory: Any,
    small_staging: Path | None,
) -> None:
    options: dict[str, Any] = {}
    full = {"on": True}
    if small_staging is None:  # no mount allowed here: inject ENOSPC at the copy step

        def copy(src: Path, dst: Path, *args: Any) -> Any:
            from nfs_watcher_uploader.nfs.copying import copy_and_hash

            if full["on"]:
                raise OSError(28, "No space left on device", str(dst))
            return copy_and_hash(src, dst, *args)

        options["copy"] = copy
    settings = make_settings(tmp_path, azurite, container_name)
    running = service_factory(settings, **options)
    filler = settings.local_staging_root / "filler"
    if small_staging is not None:
        with open(filler, "wb") as f:  # fill the disk, leaving less than one file of room
            f.write(b"\0" * (4 * 1024 * 1024 - 64 * 1024))
    date = running.post("/v1/watch/start", json={"session_name": "full"}).json()["date_prefix"]
    # Over 1 MiB, so they are staged on disk, not in memory; together more than the disk holds.
    expected = {f"f{i}": os.urandom(1200 * 1024) for i in range(5)}
    for name, data in expected.items():
        write_file(settings.nfs_incoming_dir / "full" / name, data)
    wait_for(lambda: running.get("/v1/status").json()["retrying"] > 0, timeout=30)
    assert running.service.pipeline.stats.uploaded == 0
    assert "No space left" in (running.get("/v1/status").json()["last_error"] or "")
    filler.unlink(missing_ok=True)
    full["on"] = False
    container = azurite.container(container_name)
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/full/{n}") == d for n, d in expected.items()),
        timeout=30,
    )


def test_a_stop_drains_files_written_just_before(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(min_file_age_s=1.5)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "drain"}).json()["date_prefix"]
    expected = {f"late{i}": os.urandom(5000) for i in range(5)}
    for name, data in expected.items():
        write_file(settings.nfs_incoming_dir / "drain" / name, data)
    stop = running.post("/v1/watch/stop").json()
    assert stop == {"enabled": False, "session_name": "drain", "state": "draining"}
    view = running.get("/v1/sessions/drain").json()
    assert view["state"] == "draining" and view["drained"] is False
    # A new session may start while the old one drains.
    assert running.post("/v1/watch/start", json={"session_name": "next"}).status_code == 200
    container = azurite.container(settings.azure_container)
    seen_not_drained_with_missing = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = running.get("/v1/sessions/drain").json()
        present = [blob_bytes(container, f"{date}/drain/{n}") == d for n, d in expected.items()]
        if view["drained"]:
            assert all(present), "drained before every file was in storage"
            break
        seen_not_drained_with_missing |= not all(present)
        time.sleep(0.05)
    else:
        raise AssertionError("session never drained")
    assert seen_not_drained_with_missing
    assert view["uploaded"] == 5 and view["state"] == "drained"
    sessions = running.get("/v1/sessions").json()["sessions"]
    assert {s["session_name"]: s["state"] for s in sessions} == {
        "drain": "drained",
        "next": "active",
    }


def test_a_restart_with_an_idle_session_keeps_watching(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory()
    first = service_factory(settings)
    date = first.post("/v1/watch/start", json={"session_name": "idle"}).json()["date_prefix"]
    first.stop()
    second = service_factory(settings)
    assert second.get("/v1/status").json()["active_session"] == "idle"
    write_file(settings.nfs_incoming_dir / "idle" / "after-restart.bin", b"still watched")
    container = azurite.container(settings.azure_container)
    data = wait_for(lambda: blob_bytes(container, f"{date}/idle/after-restart.bin"), timeout=20)
    assert data == b"still watched"


def test_a_corrupted_staging_copy_is_never_committed(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    corrupted: list[str] = []

    def corrupt_once(staged: Path, copied: Staged) -> Staged | None:
        if staged.name in corrupted:
            return None
        corrupted.append(staged.name)
        if copied.data is not None:  # staged in memory
            return replace(copied, data=bytes([copied.data[0] ^ 0xFF]) + copied.data[1:])
        with open(staged, "r+b") as f:  # staged on disk
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))
        return None

    settings = settings_factory(azure_max_single_put_size=64 * 1024, azure_max_block_size=64 * 1024)
    running = service_factory(settings, on_staged=corrupt_once)
    date = running.post("/v1/watch/start", json={"session_name": "bits"}).json()["date_prefix"]
    expected = {"small.bin": os.urandom(1000), "blocks.bin": os.urandom(300 * 1024)}
    for name, data in expected.items():
        write_file(settings.nfs_incoming_dir / "bits" / name, data)
    container = azurite.container(settings.azure_container)
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/bits/{n}") == d for n, d in expected.items()),
        timeout=30,
    )
    assert sorted(corrupted) == sorted(expected)
    assert running.service.pipeline.stats.retries >= 2
    assert sum("INTEGRITY MISMATCH" in r.getMessage() for r in caplog.records) >= 2


def test_a_hung_nfs_turns_healthz_503_and_the_api_keeps_answering(
    service_factory: Any, settings_factory: Any
) -> None:

    hang = threading.Event()
    release = threading.Event()

    def scan(path: Path, wanted: Any, *args: Any) -> Any:
        if hang.is_set():
            release.wait(30)
        from nfs_watcher_uploader.nfs.scan import scan_session

        return scan_session(path, wanted, *args)

    settings = settings_factory(nfs_timeout_s=0.3, liveness_timeout_s=1.5)
    running = service_factory(settings, scan=scan)
    running.post("/v1/watch/start", json={"session_name": "hang"})
    hang.set()
    try:
        wait_for(lambda: running.get("/healthz").status_code == 503, timeout=10)
        started = time.monotonic()
        assert running.get("/v1/status").status_code == 200
        assert running.get("/readyz").status_code == 200
        assert time.monotonic() - started < 1.0
        assert "watcher" in running.get("/healthz").json()["detail"]
    finally:
        hang.clear()
        release.set()
    wait_for(lambda: running.get("/healthz").status_code == 200, timeout=10)
