"""The worker pool: claim, stage, upload, complete, one file at a time per worker.

    claim     rename incoming/<s>/<f> -> .processing/<d>/<s>/<f>  (lost race: skip)
    stage     copy to local staging, MD5 of the bytes read from NFS
    upload    every request carries the MD5 read from NFS; Azure refuses changed bytes
    complete  rename into .processing/_completed/<d>/<s>/<f>; GC deletes it later

A RetryableError puts the (claimed) file on a backoff timer: 1 s, 2 s, 4 s ... capped at
APP_RETRY_MAX_S, with jitter, for as long as it takes. A PermanentError parks the file in
`.processing/_failed/` with its reason, never deleting it; `requeue_parked` brings it back.
A file is counted as uploaded only after its blob is committed.
"""

import asyncio
import heapq
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nfs_watcher_uploader import fsops
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import COMPLETED_DIR, FAILED_DIR, FAILED_REASONS_DIR
from nfs_watcher_uploader.errors import (
    CompletionPending,
    PermanentError,
    RetryableError,
)
from nfs_watcher_uploader.fsops import Copied, Nfs
from nfs_watcher_uploader.models import WorkItem
from nfs_watcher_uploader.sessions import Session, Sessions
from nfs_watcher_uploader.storage import Storage
from nfs_watcher_uploader.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Test seams: called between stage and upload with the staged path and what was read (it may
# return a replacement, to corrupt an in-memory copy); the rename; the copy.
StagedHook = Callable[[Path, Copied], Copied | None]
MoveFn = Callable[[Path, Path], bool]
CopyFn = Callable[..., Copied]


@dataclass
class Slot:
    """What one worker is doing, for /healthz and /v1/status."""

    item: WorkItem | None = None
    progress: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.progress = time.monotonic()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, times 0.5-1.0."""
    raw = min(cap, base * 2 ** min(attempt - 1, 30))
    return raw * (0.5 + rng.random() / 2)


def _log_extra(item: WorkItem) -> dict[str, str]:
    return {"file_name": item.filename, "session_name": item.session_name}


class Pipeline:
    """Workers, their queue, the retry timer, and the counters that /v1/status reports."""

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        storage: Storage,
        nfs: Nfs,
        telemetry: Telemetry,
        on_staged: StagedHook | None = None,
        rng: random.Random | None = None,
        move: MoveFn = fsops.move,
        copy: CopyFn = fsops.copy_and_hash,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.nfs = nfs
        self.telemetry = telemetry
        self._on_staged = on_staged
        self._move = move
        self._copy = copy
        self._rng = rng or random.Random()
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue(maxsize=settings.max_queue_size)
        self.slots = [Slot() for _ in range(settings.worker_concurrency)]
        self._retry_heap: list[tuple[float, int, WorkItem]] = []
        self._retry_seq = 0
        self._retry_wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._retry_task: asyncio.Task[None] | None = None
        self.processed_ok = 0
        self.processed_err = 0
        self.retries = 0
        self.bytes_uploaded = 0
        self.last_error: str | None = None
        root = settings.nfs_processing_root
        self._processing = root
        self._completed = root / COMPLETED_DIR
        self._failed = root / FAILED_DIR
        self._reasons = root / FAILED_REASONS_DIR

    def __repr__(self) -> str:
        return (
            f"Pipeline(ok={self.processed_ok} err={self.processed_err} retries={self.retries} "
            f"queued={self.queue.qsize()} in_flight={self.in_flight} retrying={self.retrying})"
        )

    @property
    def in_flight(self) -> int:
        return sum(1 for s in self.slots if s.item is not None)

    @property
    def retrying(self) -> int:
        return len(self._retry_heap)

    def stalled_for(self) -> float:
        """Seconds since the slowest busy worker last made progress (0 when all are idle)."""
        now = time.monotonic()
        return max((now - s.progress for s in self.slots if s.item is not None), default=0.0)

    def _session(self, item: WorkItem) -> Session:
        session = self.sessions.by_name.get(item.session_name)
        if session is None:
            session = self.sessions.register_recovered(item.date_prefix, item.session_name)
        return session

    def offer(self, item: WorkItem) -> bool:
        """Queue `item` if there is room; the watcher offers it again next scan if not."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        self._session(item).pending[item.filename] = "queued"
        return True

    async def put(self, item: WorkItem) -> None:
        """Queue `item`, waiting for room (recovery, retries)."""
        self._session(item).pending[item.filename] = "queued"
        await self.queue.put(item)

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers and the retry timer until cancelled or `shutdown`."""
        async with asyncio.TaskGroup() as tg:
            self._tasks = [tg.create_task(self._worker(slot)) for slot in self.slots]
            self._retry_task = tg.create_task(self._retry_loop())

    async def shutdown(self, grace: float) -> None:
        """Stop taking work, let in-flight files finish within `grace`, then cancel the rest
        (they stay in `.processing` and are recovered on the next start)."""
        self._stopping = True
        if self._retry_task is not None:
            self._retry_task.cancel()
        for task, slot in zip(self._tasks, self.slots, strict=True):
            if slot.item is None:
                task.cancel()
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task, slot in zip(self._tasks, self.slots, strict=True):
                if task in late:
                    item = slot.item
                    logger.warning(
                        "Shutdown grace over; cancelling the upload of %s (recovered on restart)",
                        item.filename if item else "?",
                        extra=_log_extra(item) if item else None,
                    )
                    task.cancel()

    async def _worker(self, slot: Slot) -> None:
        while not self._stopping:
            item = await self.queue.get()
            slot.item = item
            slot.touch()
            try:
                await self._handle(item, slot)
            finally:
                slot.item = None
                self.queue.task_done()

    async def _retry_loop(self) -> None:
        while True:
            now = time.monotonic()
            while self._retry_heap and self._retry_heap[0][0] <= now:
                _, _, item = heapq.heappop(self._retry_heap)
                await self.put(item)
            timeout = self._retry_heap[0][0] - now if self._retry_heap else None
            self._retry_wakeup.clear()
            try:
                await asyncio.wait_for(self._retry_wakeup.wait(), timeout)
            except TimeoutError:
                pass

    # --- one file --------------------------------------------------------------------------

    async def _handle(self, item: WorkItem, slot: Slot) -> None:
        session = self._session(item)
        session.pending[item.filename] = "in_flight"
        with self.telemetry.file_span(item) as span:
            try:
                if not item.claimed:
                    item = await self._claim(item, session)
                await self.process(item, slot, session)
            except CompletionPending as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(replace(item, uploaded=True), session, str(exc))
            except RetryableError as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, session, str(exc))
            except PermanentError as exc:
                self.telemetry.failed_attempt(span, exc)
                await self._park(item, session, str(exc))
            except _Skip:
                session.pending.pop(item.filename, None)
            except Exception as exc:  # a bug must cost one retry, never the worker
                logger.exception("Unexpected error on %s", item.filename, extra=_log_extra(item))
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, session, f"unexpected {type(exc).__name__}: {exc}")

    async def process(self, item: WorkItem, slot: Slot, session: Session) -> None:
        """Stage, upload and complete one claimed file. Raises UploadError."""
        if item.uploaded:  # an earlier attempt committed the blob
            await self._complete(item)
            self._count_uploaded(item, session, None)
            return
        processing = item.source_path
        staged = self.settings.local_staging_root / item.date_prefix / item.session_name
        staged = staged / item.filename
        t = self.telemetry
        with t.step("stage"):
            copied = await self._stage(item, processing, staged, slot)
        t.set_file_size(copied.size)
        if item.attempt == 0:
            session.bytes_seen += copied.size
        if self._on_staged is not None:
            copied = self._on_staged(staged, copied) or copied
        start = time.monotonic()
        with t.step("upload", **{"blob.name": item.blob_name, "file.size": copied.size}):
            await self.storage.upload(
                staged, item.blob_name, copied, slot.touch, log_extra=_log_extra(item)
            )
        t.uploaded(copied.size, time.monotonic() - start)
        try:
            if copied.data is None:  # small files were staged in memory
                staged.unlink(missing_ok=True)
        except OSError:
            logger.warning("Could not delete staged copy %s", staged, extra=_log_extra(item))
        await self._complete(item)
        self._count_uploaded(item, session, copied.size)

    async def _complete(self, item: WorkItem) -> None:
        """Move the claimed file into the completed tree (GC deletes it later)."""
        done = self._completed / item.date_prefix / item.session_name / item.filename
        with self.telemetry.step("complete"):
            try:
                moved = await self.nfs.call(lambda: self._move(item.source_path, done))
            except OSError as exc:
                raise CompletionPending(f"blob committed, cannot mark completed: {exc}") from exc
        if not moved:  # neither side is there: GC already took the marker
            logger.info(
                "Completed marker of %s already collected", item.filename, extra=_log_extra(item)
            )

    def _count_uploaded(self, item: WorkItem, session: Session, size: int | None) -> None:
        session.pending.pop(item.filename, None)
        session.uploaded += 1
        self.processed_ok += 1
        if size is not None:
            session.bytes_uploaded += size
            self.bytes_uploaded += size
        logger.info(
            "Uploaded %s",
            item.blob_name,
            extra={**_log_extra(item), "blob_name": item.blob_name, "size_bytes": size},
        )

    async def _claim(self, item: WorkItem, session: Session) -> WorkItem:
        """Rename the file from incoming into `.processing`. Raises _Skip if it is not ours."""
        processing = self._processing / item.date_prefix / item.session_name / item.filename
        with self.telemetry.step("claim"):
            try:
                claimed = await self.nfs.call(lambda: self._move(item.source_path, processing))
            except OSError as exc:
                # Unknown whether the rename happened (NFS can report a failure for a rename
                # that succeeded): retry it; `fsops.move` then sees where the file is.
                raise RetryableError(f"claim failed: {exc}") from exc
        if not claimed:
            logger.debug("Lost the claim race for %s", item.filename, extra=_log_extra(item))
            raise _Skip
        session.files_seen += 1
        return replace(item, source_path=processing, claimed=True)

    async def _stage(self, item: WorkItem, src: Path, dst: Path, slot: Slot) -> Copied:
        try:
            return await self.nfs.call_watched(
                lambda: self._copy(
                    src,
                    dst,
                    slot.touch,
                    self.storage.block_size,
                    self.storage.single_put_size,
                    self.storage.in_memory_max,
                ),
                lambda: slot.progress,
            )
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == dst.parent:
                raise RetryableError(f"staging folder missing: {exc}") from exc
            return await self._source_vanished(item, src, exc)
        except OSError as exc:
            dst.unlink(missing_ok=True)
            raise RetryableError(f"staging copy failed: {exc}") from exc

    async def _source_vanished(self, item: WorkItem, src: Path, exc: OSError) -> Copied:
        done = self._completed / item.date_prefix / item.session_name / item.filename
        try:
            completed = await self.nfs.call(lambda: fsops.exists(done))
            still_there = completed or await self.nfs.call(lambda: fsops.exists(src))
        except OSError:
            raise RetryableError(f"source not readable yet: {exc}") from exc
        if completed:  # an earlier attempt committed the blob and marked it completed
            raise CompletionPending("already marked completed") from exc
        if still_there:
            raise RetryableError(f"source not readable yet: {exc}") from exc
        raise PermanentError(f"claimed file vanished from {src.parent}") from exc

    # --- outcomes -------------------------------------------------------------------------

    def _retry_later(self, item: WorkItem, session: Session, reason: str) -> None:
        attempt = item.attempt + 1
        delay = backoff_delay(
            attempt, self.settings.retry_base_s, self.settings.retry_max_s, self._rng
        )
        self.retries += 1
        self.telemetry.retried()
        self.last_error = session.last_error = f"{item.filename}: {reason}"
        session.pending[item.filename] = "retrying"
        logger.warning(
            "Upload of %s failed (attempt %d): %s; retrying in %.1f s",
            item.filename,
            attempt,
            reason,
            delay,
            extra=_log_extra(item),
        )
        self._retry_seq += 1
        heapq.heappush(
            self._retry_heap,
            (time.monotonic() + delay, self._retry_seq, replace(item, attempt=attempt)),
        )
        self._retry_wakeup.set()

    async def _park(self, item: WorkItem, session: Session, reason: str) -> None:
        rel = Path(item.date_prefix) / item.session_name / item.filename
        record = json.dumps({"reason": reason, "blob_name": item.blob_name, "at": time.time()})

        def park() -> bool:
            moved = self._move(item.source_path, self._failed / rel)
            if moved:
                fsops.write_atomic(self._reasons / rel, record.encode(), ".reason.tmp-")
            return moved

        try:
            moved = await self.nfs.call(park) if item.claimed else False
        except OSError as exc:
            self._retry_later(item, session, f"{reason} (and parking failed: {exc})")
            return
        session.pending.pop(item.filename, None)
        staged = self.settings.local_staging_root / rel
        staged.unlink(missing_ok=True)
        if moved:
            session.parked.add(item.filename)
        self.processed_err += 1
        self.telemetry.failed()
        self.last_error = session.last_error = f"{item.filename}: {reason}"
        logger.error(
            "Gave up on %s: %s%s",
            item.filename,
            reason,
            "; parked in " + str(self._failed / rel.parent) if moved else "",
            extra=_log_extra(item),
        )

    async def requeue_parked(self, session_name: str | None) -> int:
        """Move parked files back into `.processing` and queue them. Returns how many."""
        found = await self.nfs.call(lambda: list(fsops.iter_tree_files(self._failed)))
        count = 0
        for date_prefix, name, path in found:
            if session_name is not None and name != session_name:
                continue
            rel = Path(date_prefix) / name / path.name
            target = self._processing / rel
            reason = self._reasons / rel

            def unpark(src: Path = path, dst: Path = target, why: Path = reason) -> bool:
                moved = fsops.move(src, dst)
                why.unlink(missing_ok=True)
                return moved

            if not await self.nfs.call(unpark):
                continue
            session = self.sessions.by_name.get(name) or self.sessions.register_recovered(
                date_prefix, name
            )
            session.parked.discard(path.name)
            await self.put(WorkItem(target, name, date_prefix, path.name, claimed=True))
            count += 1
        return count


class _Skip(Exception):
    """Not an error: the file was taken by someone else, or stays in incoming for next scan."""
