"""Recovery: on start, queue every file a previous run left in `.processing`.

Files under `.processing/<YYYYMMDD>/<session>/` were claimed but not completed; their upload is
repeated (a blob already there with the same bytes is recognised, not sent again). Parked files
under `_failed/` are counted, not retried. Files in `_completed/` were committed by the previous
run, which took with it what it knew of them: GC checks each once more (`adopt`) before any is
deleted. A session found only through such files is resumed: as the active session when no
state file was ever written (the original design's auto-resume), else as draining.
"""

import logging
import shutil
from pathlib import Path

from nfs_watcher_uploader import fsops
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import DATE_DIR_RE
from nfs_watcher_uploader.fsops import Nfs
from nfs_watcher_uploader.gc import GarbageCollector
from nfs_watcher_uploader.layout import Layout
from nfs_watcher_uploader.models import WorkItem
from nfs_watcher_uploader.pipeline import Pipeline
from nfs_watcher_uploader.sessions import Sessions

logger = logging.getLogger(__name__)


def clear_staging(root: Path) -> None:
    """Staging is a cache of `.processing`: anything left there from a previous run is stale.
    Only our own date folders are removed, never anything else under a misconfigured root."""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if DATE_DIR_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


async def recover(
    settings: Settings, sessions: Sessions, pipeline: Pipeline, gc: GarbageCollector, nfs: Nfs
) -> int:
    """Queue unfinished files, count parked ones, hand completed ones to GC. Returns how many
    files were queued."""
    layout = Layout.from_settings(settings)

    def listing() -> tuple[list[WorkItem], list[WorkItem], list[WorkItem]]:
        def items(root: Path) -> list[WorkItem]:
            return [
                WorkItem(name, date, rel, claimed=True)
                for date, name, rel, _ in fsops.iter_tree_files(root)
            ]

        return (
            items(layout.processing_root),
            items(layout.parked_root),
            items(layout.completed_root),
        )

    left, parked, completed = await nfs.call(listing, timeout=nfs.timeout * 10)
    fresh_install = sessions.loaded and not sessions.by_name
    for item in parked:
        sessions.for_item(item).found_parked(item.rel)
    for item in left:
        sessions.for_item(item)
    if fresh_install and left:
        newest = max(left, key=lambda i: (i.date_prefix, i.session_name))
        sessions.resume(newest.session_name)
    if left or parked:
        try:
            await sessions.save()
        except OSError:
            logger.warning("Could not save session state after recovery", exc_info=True)
    gc.adopt(completed)
    for item in left:
        await pipeline.put(item)
    if left:
        logger.info("Recovery: queued %d files left in %s", len(left), layout.processing_root)
    return len(left)
