"""The local staging folder (our own `nfs-watcher-uploader/` folder on the staging disk) and
every cleanup of it, in one place. Staging is a cache of `.processing`: a staged copy is only
ever re-made from NFS, so deleting one never loses a file.

    remove_staged        one copy, once its blob is committed (or its file parked)
    clear_staging        at start: what a previous run left, date folders only
    prune_staging        each GC: copies of sessions that are no longer live
    disk_free_and_size   the disk's usage, for the metrics

All of them block: run them in a thread (the staging disk may be slow too).
"""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from nfs_watcher_uploader.constants import DATE_DIR_RE
from nfs_watcher_uploader.items import WorkItem, log_extra
from nfs_watcher_uploader.nfs import trees

logger = logging.getLogger(__name__)


def remove_staged(staged: Path, item: WorkItem) -> None:
    """Delete a staged copy."""
    try:
        staged.unlink(missing_ok=True)
    except OSError:
        logger.warning("Could not delete staged copy %s", staged, extra=log_extra(item))


def clear_staging(folder: Path) -> None:
    """Staging is a cache of `.processing`: what a previous run left in our own staging folder
    is stale. Only our date folders in it are removed, never anything else."""
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if DATE_DIR_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def prune_staging(root: Path, live: Callable[[str, str], bool]) -> None:
    """Staged copies of sessions that are no longer live are leftovers of cancelled work."""
    for date_prefix, name, _, path in list(trees.iter_tree_files(root)):
        if not live(date_prefix, name):
            path.unlink(missing_ok=True)
    trees.prune_empty_dirs(root, live)


def disk_free_and_size(root: Path) -> tuple[int, int]:
    """Free and total bytes of the disk staging is on."""
    # Staging is created on first use; until then, the disk it will be on is its nearest
    # existing parent's.
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total
