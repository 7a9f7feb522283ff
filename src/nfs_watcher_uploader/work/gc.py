"""Garbage collection: delete completed files once they are proven unchanged; prune folders;
and, on the same beat, sample the staging disk's free space for the metrics and run the
service's other slow chores (each a coroutine of its owner: parked files removed by hand,
ledgers past their retention).

Only files in `.processing/_completed/` are ever deleted, and only when they still have the size
and mtime of the bytes committed to their blob. One that changed was written to after it was
claimed (a writer that paused longer than APP_MIN_FILE_AGE_S): it is uploaded again, whole,
over the same blob, from where it lies, and a session that had ended drains again, so that
its manifest says what storage holds. Nothing is moved, so nothing here can wait on a name.
(Completed files left by a previous run are checked the same way by `recovery`.)

Empty folders are pruned only for sessions that are not watched and have no work pending, so GC
never pulls a folder out from under a claim (and `moves.move` recreates a missing one anyway).
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import COMPLETED_DIR, PARKED_DIR, PARKED_REASONS_DIR
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs import copying, trees
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.work.completions import Completed, CompletedFiles
from nfs_watcher_uploader.work.staging import disk_free_and_size, prune_staging

logger = logging.getLogger(__name__)


@dataclass
class _Sweep:
    """What one sweep did, for the event loop to act on."""

    forgotten: list[Path] = field(default_factory=list[Path])  # deleted, or gone
    changed: list[Path] = field(default_factory=list[Path])  # written to since: send again
    deleted: int = 0


# One of the chores run on GC's beat; an OSError it raises is a warning, and it runs again.
Chore = Callable[[], Awaitable[object]]


class GarbageCollector:
    """Deletes what `completed` holds once proven unchanged; a file that changed goes to
    `resend` (Pipeline.resend_whole), which sends it again whole. Runs `chores` on its beat."""

    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        sessions: Sessions,
        nfs: Nfs,
        completed: CompletedFiles,
        resend: Callable[[WorkItem], Awaitable[bool]],
        chores: Sequence[Chore] = (),
    ) -> None:
        self.settings, self.layout, self.sessions, self.nfs = settings, layout, sessions, nfs
        self.completed = completed
        self._resend = resend
        self.chores = tuple(chores)
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
            except Exception:  # a bug costs this sweep, never GC (nor the service with it)
                logger.exception("GC sweep failed unexpectedly")
            for chore in self.chores:
                name = getattr(chore, "__name__", chore)
                try:
                    await chore()
                except OSError as exc:
                    logger.warning("%s failed on NFS: %s", name, exc)
                except Exception:  # what a chore reads is input: it costs that chore's turn
                    logger.exception("%s failed unexpectedly", name)

    async def sample_staging(self) -> None:
        """Read the staging disk's usage in a thread; the metrics report the cached values."""
        try:
            free, size = await anyio.to_thread.run_sync(
                disk_free_and_size, self.settings.local_staging_root
            )
        except OSError as exc:
            logger.warning("Cannot read the staging disk's usage: %s", exc)
            self.staging_free = self.staging_size = None
            return
        self.staging_free, self.staging_size = free, size

    def _live_sessions(self) -> frozenset[str]:
        """Sessions whose folders must stay: watched, or with work pending."""
        return frozenset(s.name for s in self.sessions.by_name.values() if s.watched or s.pending)

    async def sweep_once(self) -> int:
        """Delete unchanged completed files, send changed ones again, prune idle folders.
        Returns how many files were deleted."""
        # Taken on the event loop, so that the thread below never reads state the loop changes.
        records = self.completed.snapshot()
        names = self._live_sessions()

        def live(date_prefix: str, name: str) -> bool:
            return name in names

        def sweep() -> _Sweep:
            done = _Sweep()
            for path, record in records.items():
                _check(path, record, done)
            root = self.layout.processing_root
            for folder in (COMPLETED_DIR, PARKED_DIR, PARKED_REASONS_DIR):
                trees.prune_empty_dirs(root, lambda d, s: False, folder)
            trees.prune_empty_dirs(root, live)
            return done

        # One thread call for the whole NFS sweep, not one round trip per file.
        done = await self.nfs.call(sweep, timeout=self.nfs.timeout * 10)
        for path in done.forgotten + done.changed:
            self.completed.forget(path, records[path])
        for path in done.changed:
            await self._resend(self.layout.as_completed(records[path].item))
        self.markers_deleted += done.deleted
        await anyio.to_thread.run_sync(prune_staging, self.layout.staging_dir, live)
        return done.deleted


def _check(path: Path, record: Completed, done: _Sweep) -> None:
    try:
        if not copying.unchanged(path, record.size, record.mtime_ns):
            done.changed.append(path)
            return
        os.unlink(path)
        done.deleted += 1
    except FileNotFoundError:
        pass
    done.forgotten.append(path)
