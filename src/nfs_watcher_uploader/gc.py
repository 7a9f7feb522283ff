"""Garbage collection: delete completed markers and prune folders no live session needs; and,
on the same beat, sample the staging disk's free space for the metrics.

Only files under `.processing/_completed/` are ever deleted: each got there by a rename made
after its blob was committed. Empty session folders are pruned only for sessions that are not
watched and have no work pending, so GC can never pull a folder out from under a claim (and
`fsops.move` recreates a destination folder anyway).
"""

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader import fsops
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import COMPLETED_DIR, FAILED_DIR, FAILED_REASONS_DIR
from nfs_watcher_uploader.fsops import Nfs
from nfs_watcher_uploader.sessions import Sessions

logger = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, settings: Settings, sessions: Sessions, nfs: Nfs) -> None:
        self.settings = settings
        self.sessions = sessions
        self.nfs = nfs
        self.markers_deleted = 0
        # Bytes free and total on the staging disk, from the last sample (None: not yet).
        self.staging_free: int | None = None
        self.staging_size: int | None = None

    def __repr__(self) -> str:
        return (
            f"GarbageCollector(markers_deleted={self.markers_deleted} "
            f"staging_free={self.staging_free})"
        )

    async def run(self) -> None:
        while True:
            # First, so that a sweep stuck on NFS cannot hold up the local disk's reading.
            await self.sample_staging()
            await asyncio.sleep(self.settings.gc_interval_s)
            try:
                await self.sweep_once()
            except OSError:
                logger.warning("GC sweep failed", exc_info=True)

    async def sample_staging(self) -> None:
        """Read the staging disk's usage in a thread; the metrics report the cached values."""
        try:
            free, size = await anyio.to_thread.run_sync(
                _disk_free_and_size, self.settings.local_staging_root
            )
        except OSError as exc:
            logger.warning("Cannot read the staging disk's usage: %s", exc)
            self.staging_free = self.staging_size = None
            return
        self.staging_free, self.staging_size = free, size

    def _live_sessions(self) -> frozenset[str]:
        """Sessions whose folders must stay: watched, or with work pending. Taken on the event
        loop, so that the threads below never read state the loop is changing."""
        return frozenset(s.name for s in self.sessions.by_name.values() if s.watched or s.pending)

    async def sweep_once(self) -> int:
        """Delete completed markers and prune idle folders. Returns markers deleted."""
        root = self.settings.nfs_processing_root
        completed = root / COMPLETED_DIR
        names = self._live_sessions()

        def live(date_prefix: str, name: str) -> bool:
            return name in names

        def sweep() -> int:
            deleted = _delete_markers(completed)
            fsops.prune_empty_dirs(completed, lambda d, s: False)
            fsops.prune_empty_dirs(root / FAILED_DIR, lambda d, s: False)
            fsops.prune_empty_dirs(root / FAILED_REASONS_DIR, lambda d, s: False)
            fsops.prune_empty_dirs(root, live)
            return deleted

        # One thread call for the whole NFS sweep, not one round trip per marker.
        deleted = await self.nfs.call(sweep, timeout=self.nfs.timeout * 10)
        self.markers_deleted += deleted
        await anyio.to_thread.run_sync(_prune_staging, self.settings.local_staging_root, live)
        return deleted


def _delete_markers(completed: Path) -> int:
    deleted = 0
    for _, _, path in list(fsops.iter_tree_files(completed)):
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


def _disk_free_and_size(root: Path) -> tuple[int, int]:
    # Staging is created on first use; until then, the disk it will be on is its nearest
    # existing parent's.
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def _prune_staging(root: Path, live: Callable[[str, str], bool]) -> None:
    """Staged copies of sessions that are no longer live are leftovers of cancelled work."""
    for date_prefix, name, path in list(fsops.iter_tree_files(root)):
        if not live(date_prefix, name):
            path.unlink(missing_ok=True)
    fsops.prune_empty_dirs(root, live)
