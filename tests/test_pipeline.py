"""Claims, recovery, GC and growing files, through the real service, files and Azurite."""

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.nfs import moves, runner, trees
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.work.gc import GarbageCollector

from .helpers import Azurite, blob_bytes, leftover_files, wait_for, write_file


def test_file_still_being_written_is_not_claimed_early(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(min_file_age_s=1.0, poll_interval_s=0.1)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "grow"}).json()["date_prefix"]
    path = settings.nfs_incoming_dir / "grow" / "growing.bin"
    chunks = [os.urandom(64 * 1024) for _ in range(8)]
    # A recorder keeps the file open and appends in bursts, 0.4 s apart, for about 3 s.
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(0.4)
            assert running.service.pipeline.stats.uploaded == 0
            assert path.exists(), "claimed while the recorder was still writing"
    container = azurite.container(settings.azure_container)
    data = wait_for(lambda: blob_bytes(container, f"{date}/grow/growing.bin"), timeout=20)
    assert data == b"".join(chunks)
    # Counted once its ledger line is written and it is marked done, a moment after the commit.
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=20)


def test_claim_races_are_skipped_not_counted(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A file that vanishes before its claim, and a claim that meets ESTALE, are not errors;
    the ESTALE one is offered again and uploaded."""
    stale_once = {"flaky.bin"}
    vanish = {"vanish.bin"}

    def claim(folder: Path, rel: str, dst: Path, *args: Any) -> moves.Moved:
        if rel in vanish:
            (folder / rel).unlink(missing_ok=True)  # another claimant got there first
        if rel in stale_once:
            stale_once.discard(rel)
            raise OSError(errno.ESTALE, "Stale file handle", str(folder / rel))
        return moves.claim(folder, rel, dst, *args)

    settings = settings_factory()
    running = service_factory(settings, claim=claim)
    date = running.post("/v1/watch/start", json={"session_name": "race"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "race"
    for name in ("vanish.bin", "flaky.bin", "ok.bin"):
        write_file(incoming / name, name.encode())
    container = azurite.container(settings.azure_container)
    wait_for(
        lambda: (
            blob_bytes(container, f"{date}/race/flaky.bin")
            and blob_bytes(container, f"{date}/race/ok.bin")
        ),
        timeout=20,
    )
    # Counted once marked done, a moment after the commit (its ledger line comes between).
    status = wait_for(lambda: (s := running.get("/v1/status").json())["processed_ok"] == 2 and s)
    assert status["processed_err"] == 0
    assert blob_bytes(container, f"{date}/race/vanish.bin") is None
    session = running.get("/v1/sessions/race").json()
    assert session["uploaded"] == 2 and session["failed"] == 0


def test_recovery_uploads_leftovers_and_resumes_the_session(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    settings = settings_factory()
    left = settings.nfs_processing_root / "20260102" / "crashed"
    older = settings.nfs_processing_root / "20260101" / "older"
    files = {
        left / "a.bin": b"a" * 10,
        left / "b.completed": b"a user file that only looks like a marker",
        older / "c.bin": b"c",
    }
    for path, data in files.items():
        write_file(path, data)
    running = service_factory(settings)
    container = azurite.container(settings.azure_container)
    for path, data in files.items():
        name = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
        assert wait_for(lambda n=name: blob_bytes(container, n), timeout=20) == data
    status = running.get("/v1/status").json()
    assert status["active_session"] == "crashed"  # the newest session resumes
    assert running.get("/v1/sessions/older").json()["state"] in ("draining", "drained")
    # The resumed session is watched: a new file dropped in its incoming folder goes up.
    write_file(settings.nfs_incoming_dir / "crashed" / "new.bin", b"new")
    wait_for(lambda: blob_bytes(container, "20260102/crashed/new.bin"), timeout=20)
    wait_for(lambda: not leftover_files(tmp_path), timeout=20, what="nothing left behind")


async def test_gc_deletes_markers_only_and_keeps_live_folders(settings_factory: Any) -> None:
    settings = settings_factory()
    root = settings.nfs_processing_root
    marker = root / "_completed" / "20260101" / "done" / "x.bin"
    user_file = root / "20260101" / "live" / "y.completed"
    for p in (marker, user_file):
        write_file(p, b"data")
    (root / "20260101" / "idle").mkdir(parents=True)
    (root / "20260101" / "active").mkdir(parents=True)
    nfs = runner.Nfs(5)
    from nfs_watcher_uploader.items import WorkItem
    from nfs_watcher_uploader.nfs.layout import Layout
    from nfs_watcher_uploader.sessions.registry import Sessions
    from nfs_watcher_uploader.work.completions import Completed, CompletedFiles

    sessions = Sessions(root, nfs)
    sessions.by_name["active"] = Session("active", "20260101", "active", 0.0)
    item = WorkItem("done", "20260101", "x.bin", claimed=True)
    completed = CompletedFiles()
    completed.add(marker, Completed(item, 4, marker.stat().st_mtime_ns))
    resent: list[WorkItem] = []

    def resend(item: WorkItem) -> bool:
        resent.append(item)
        return True

    layout = Layout.from_settings(settings)
    gc = GarbageCollector(settings, layout, sessions, nfs, completed, resend)
    assert await gc.sweep_once() == 1
    assert not marker.exists()
    assert user_file.read_bytes() == b"data"
    assert not (root / "20260101" / "idle").exists()
    assert (root / "20260101" / "active").is_dir()
    assert not (root / "_completed" / "20260101").exists()
    assert len(completed) == 0 and resent == []  # deleted unchanged: forgotten, not sent again


def test_gc_never_strands_a_claim(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """The design's GC pruned the live session's `.processing` folder and the next claim's
    ENOENT was read as a lost race: every file stayed in incoming. Run GC constantly."""
    settings = settings_factory(gc_interval_s=0.01)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "gcrace"}).json()["date_prefix"]
    stop = threading.Event()

    def prune_all() -> None:  # an extra, aggressive pruner: even live folders go
        while not stop.is_set():
            trees.prune_empty_dirs(settings.nfs_processing_root, lambda d, s: False)

    pruner = threading.Thread(target=prune_all)
    pruner.start()
    try:
        for i in range(50):
            write_file(settings.nfs_incoming_dir / "gcrace" / f"f{i}", str(i).encode())
        container = azurite.container(settings.azure_container)
        wait_for(
            lambda: all(blob_bytes(container, f"{date}/gcrace/f{i}") for i in range(50)),
            timeout=60,
        )
    finally:
        stop.set()
        pruner.join()
    assert running.get("/v1/status").json()["processed_ok"] == 50
    wait_for(lambda: not leftover_files(tmp_path), timeout=20)


def test_completion_that_reports_failure_after_succeeding_counts_once(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """NFS can answer a rename with an error although it happened (a lost reply): the blob is
    committed, so the file must end up counted once as uploaded, never as failed or twice."""
    lied: list[str] = []

    def move(src: Path, dst: Path, expect: Any) -> moves.Moved:
        moved = moves.move(src, dst, expect=expect)
        if "_completed" in dst.parts and src.name not in lied:
            lied.append(src.name)
            raise OSError(errno.ESTALE, "Stale file handle (after the rename happened)")
        return moved

    settings = settings_factory()
    running = service_factory(settings, move=move)
    date = running.post("/v1/watch/start", json={"session_name": "lie"}).json()["date_prefix"]
    for name in ("a.bin", "b.bin"):
        write_file(settings.nfs_incoming_dir / "lie" / name, name.encode())
    container = azurite.container(settings.azure_container)
    wait_for(lambda: running.get("/v1/sessions/lie").json()["uploaded"] == 2, timeout=20)
    assert sorted(lied) == ["a.bin", "b.bin"]
    status = running.get("/v1/status").json()
    assert status["processed_ok"] == 2 and status["processed_err"] == 0
    assert status["retries"] >= 2
    assert blob_bytes(container, f"{date}/lie/a.bin") == b"a.bin"
    wait_for(lambda: not leftover_files(tmp_path), timeout=20, what="nothing left behind")
