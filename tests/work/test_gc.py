"""GC deletes only completed files it proved unchanged, and never pulls a folder from under a
claim."""

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs import runner, trees
from nfs_watcher_uploader.sessions.session import Session, today_utc
from nfs_watcher_uploader.work.gc import GarbageCollector
from tests.support.cloud import blobs_of
from tests.support.helpers import (
    Azurite,
    HeldCopy,
    blob_bytes,
    leftover_files,
    on_service_loop,
    put_blob,
    session_view,
    until,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_completed_file_rechecked_while_a_same_named_file_is_queued_uploads_both(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """The same hole as above, reached by a restart: `_completed/a.bin` was left by the
    previous run (committed, not yet collected), and the recorder writes a new a.bin which is
    queued. GC's first sweep moves the old one back into `.processing` to verify it, and
    `Pipeline.put` drops it (a.bin is pending). The new a.bin is then held (`.processing/a.bin`
    taken) for as long as the session is active; no one works on the old one.

    Should: the old one is recognised as already up and collected, the new one goes up as
    a~2.bin.

    Finding adversary-review-C (second adversarial review, issue 10).
    """
    date = today_utc()
    hold = HeldCopy("hold.bin")
    settings = settings_factory(worker_concurrency=1, gc_interval_s=100_000.0)
    write_file(settings.nfs_processing_root / "_completed" / date / "ring" / "a.bin", b"old")
    container = azurite.container(settings.azure_container)
    container.create_container()
    put_blob(container, f"{date}/ring/a.bin", b"old")
    running = service_factory(settings, copy=hold)
    # Recovery registers "ring" as draining while it checks the completed a.bin once more; a
    # start while it drains is a 409 by design, so start it once that check is done.
    wait_for(lambda: session_view(running, "ring")["state"] != "draining", what="ring drained")
    assert running.post("/v1/watch/start", json={"session_name": "ring"}).status_code == 200
    incoming = settings.nfs_incoming_dir / "ring"
    write_file(incoming / "hold.bin", b"hold")
    assert hold.started.wait(20)
    write_file(incoming / "a.bin", b"new")
    wait_for(lambda: session_view(running, "ring")["queued"] == 1, what="the new a.bin queued")
    on_service_loop(running, running.service.gc.sweep_once())  # GC's first sweep after the start
    hold.release.set()
    proc = settings.nfs_processing_root
    until(
        lambda: blob_bytes(container, f"{date}/ring/a~2.bin") == b"new",
        10,
        lambda: (
            f"blobs {sorted(blobs_of(container, f'{date}/ring/'))}; "
            f"held={session_view(running, 'ring')['held']}; in .processing, no work pending: "
            f"{sorted(str(p.relative_to(proc)) for p in proc.rglob('a.bin'))}"
        ),
        step=lambda: on_service_loop(running, running.service.gc.sweep_once()),
    )


async def test_gc_deletes_completed_files_only_and_keeps_live_folders(
    settings_factory: Any,
) -> None:
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

    async def resend(item: WorkItem) -> bool:
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


@pytest.mark.adversarial
async def test_a_chore_that_fails_unexpectedly_costs_its_turn_never_gc(
    tmp_path: Path, settings_factory: Any
) -> None:
    """GC's chores read what is on the share (parked files removed by hand, ledgers); one that
    raised anything but an OSError ended GC's loop, and the service with it.

    Found attacking issue 21's change.
    """
    from nfs_watcher_uploader.nfs.layout import Layout
    from nfs_watcher_uploader.sessions.registry import Sessions
    from nfs_watcher_uploader.work.completions import CompletedFiles

    settings = settings_factory(gc_interval_s=0.01)
    nfs = runner.Nfs(5)
    turns: list[int] = []

    async def chore() -> None:
        turns.append(1)
        raise OverflowError("a time no clock shows")

    async def resend(item: Any) -> bool:
        return False

    layout = Layout.from_settings(settings)
    gc = GarbageCollector(
        settings, layout, Sessions(tmp_path, nfs), nfs, CompletedFiles(), resend, [chore]
    )
    task = asyncio.create_task(gc.run())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while len(turns) < 3:
            assert not task.done(), task.exception()
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
