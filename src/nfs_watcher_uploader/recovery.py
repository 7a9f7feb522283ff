"""Recovery: on start, queue every file a previous run left in `.processing`.

Files under `.processing/<YYYYMMDD>/<session>/` were claimed but not completed; their upload is
repeated (overwriting a blob is idempotent). Parked files under `_failed/` are counted, not
retried. A session found only through such files is resumed: as the active session when no
state file was ever written (the original design's auto-resume), else as draining.
"""

import logging
import shutil
from pathlib import Path

from nfs_watcher_uploader import fsops
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import DATE_DIR_RE, FAILED_DIR
from nfs_watcher_uploader.fsops import Nfs
from nfs_watcher_uploader.models import WorkItem
from nfs_watcher_uploader.sessions import Sessions
from nfs_watcher_uploader.worker import Pipeline

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


async def recover(settings: Settings, sessions: Sessions, pipeline: Pipeline, nfs: Nfs) -> int:
    """Queue unfinished files and count parked ones. Returns how many files were queued."""
    root = settings.nfs_processing_root
    left = await nfs.call(lambda: list(fsops.iter_tree_files(root)), timeout=nfs.timeout * 10)
    parked = await nfs.call(
        lambda: list(fsops.iter_tree_files(root / FAILED_DIR)), timeout=nfs.timeout * 10
    )
    fresh_install = sessions.loaded and not sessions.by_name
    for date_prefix, name, path in parked:
        sessions.register_recovered(date_prefix, name).parked.add(path.name)
    for date_prefix, name, _ in left:
        sessions.register_recovered(date_prefix, name)
    if fresh_install and left:
        newest = max(left, key=lambda t: (t[0], t[1]))
        resumed = sessions.by_name[newest[1]]
        resumed.state, resumed.stopped_at = "active", None
    if left or parked:
        try:
            await sessions.save()
        except OSError:
            logger.warning("Could not save session state after recovery", exc_info=True)
    for date_prefix, name, path in left:
        await pipeline.put(WorkItem(path, name, date_prefix, path.name, claimed=True))
    if left:
        logger.info("Recovery: queued %d files left in %s", len(left), root)
    return len(left)
