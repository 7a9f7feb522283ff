"""The worker pool: claim, stage, upload, complete, one file at a time per worker.

    claim     rename incoming/<s>/<rel> -> .processing/<d>/<s>/<rel>  (lost race: skip;
              the name still taken by an earlier file: leave it in incoming for now)
    stage     copy to local staging, MD5 of the bytes read from NFS
    upload    every request carries the MD5 read from NFS; Azure refuses changed bytes; a name
              held by other bytes is kept, and this file goes up under the next free name
    complete  if the file is unchanged since it was read, rename it into
              .processing/_completed/<d>/<s>/<rel>; GC checks it again, then deletes it

A RetryableError puts the (claimed) file on a backoff timer: 1 s, 2 s, 4 s ... capped at
APP_RETRY_MAX_S, with jitter, for as long as it takes. A PermanentError parks the file in
`.processing/_failed/` with its reason, never deleting it; `requeue_parked` brings it back.
NotOurs (a symlink or a FIFO where a file was) leaves the entry in incoming and reports it.
A file written to after it was claimed is sent again, whole, over the same blob.
A file is counted as uploaded only after its blob is committed.
"""

import asyncio
import functools
import heapq
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader import fsops
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import MAX_NAME_VERSIONS
from nfs_watcher_uploader.errors import (
    CompletionPending,
    NotOurs,
    PermanentError,
    RetryableError,
)
from nfs_watcher_uploader.fsops import Copied, Moved, Nfs
from nfs_watcher_uploader.layout import Layout, versioned
from nfs_watcher_uploader.models import FailedFile, WorkItem, printable
from nfs_watcher_uploader.sessions import Session, Sessions
from nfs_watcher_uploader.storage import Storage
from nfs_watcher_uploader.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Test seams: called between stage and upload with the staged path and what was read (it may
# return a replacement, to corrupt an in-memory copy); the claim; the other renames; the copy.
StagedHook = Callable[[Path, Copied], Copied | None]
ClaimFn = Callable[[Path, str, Path, tuple[int, int] | None], Moved]
MoveFn = Callable[[Path, Path, tuple[int, int] | None], Moved]
CopyFn = Callable[..., Copied]


@dataclass
class Slot:
    """What one worker is doing, for /healthz and /v1/status."""

    item: WorkItem | None = None
    progress: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.progress = time.monotonic()


@dataclass(frozen=True, slots=True)
class Completed:
    """A file in the completed tree: what was committed, for GC's last look before deleting."""

    item: WorkItem
    size: int
    mtime_ns: int


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, times 0.5-1.0."""
    raw = min(cap, base * 2 ** min(attempt - 1, 30))
    return raw * (0.5 + rng.random() / 2)


def log_extra(item: WorkItem) -> dict[str, str]:
    return {"file_name": printable(item.rel), "session_name": item.session_name}


class _LateWrite(Exception):
    """The file changed after it was read: send it again, whole, over the same blob."""

    def __init__(self, item: WorkItem) -> None:
        super().__init__(item.rel)
        self.item = item


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
        claim: ClaimFn = fsops.claim,
        move: MoveFn = fsops.move,
        copy: CopyFn = fsops.copy_and_hash,
    ) -> None:
        self.settings = settings
        self.layout = Layout.from_settings(settings)
        self.sessions = sessions
        self.storage = storage
        self.nfs = nfs
        self.telemetry = telemetry
        self._on_staged = on_staged
        self._claim_fn = claim
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
        # Two requeues at once would both list the same parked files.
        self._requeuing = asyncio.Lock()
        # completed path -> what was committed; GC reads a copy, checks and deletes.
        self.completed: dict[Path, Completed] = {}
        self.processed_ok = 0
        self.processed_err = 0
        self.retries = 0
        self.bytes_uploaded = 0
        self.late_writes = 0
        self.last_error: str | None = None

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

    def offer(self, item: WorkItem) -> bool:
        """Queue `item` if there is room; the watcher offers it again next scan if not."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        self.sessions.for_item(item).pending[item.rel] = "queued"
        return True

    async def put(self, item: WorkItem) -> bool:
        """Queue `item`, waiting for room (recovery, GC, requeues of parked files). A file that
        already has work queued, in flight or retrying is not queued twice: False."""
        if item.rel in self.sessions.for_item(item).pending:
            logger.debug("%s is already in progress", printable(item.rel), extra=log_extra(item))
            return False
        await self._enqueue(item)
        return True

    async def _enqueue(self, item: WorkItem) -> None:
        self.sessions.for_item(item).pending[item.rel] = "queued"
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
                        printable(item.rel) if item else "?",
                        extra=log_extra(item) if item else None,
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
                await self._enqueue(item)
            timeout = self._retry_heap[0][0] - now if self._retry_heap else None
            self._retry_wakeup.clear()
            try:
                await asyncio.wait_for(self._retry_wakeup.wait(), timeout)
            except TimeoutError:
                pass

    # --- one file --------------------------------------------------------------------------

    async def _handle(self, item: WorkItem, slot: Slot) -> None:
        session = self.sessions.for_item(item)
        session.pending[item.rel] = "in_flight"
        with self.telemetry.file_span(item) as span:
            try:
                if not item.claimed:
                    item = await self._claim(item, session)
                await self.process(item, slot, session)
            except NotOurs as exc:
                await self._not_ours(item, session, str(exc))
            except _LateWrite as exc:
                await self._enqueue(self.late_write(exc.item))
            except _Pending as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(exc.item, session, str(exc))
            except RetryableError as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, session, str(exc))
            except PermanentError as exc:
                self.telemetry.failed_attempt(span, exc)
                await self._park(item, session, str(exc))
            except _Skip:
                session.pending.pop(item.rel, None)
            except Exception as exc:  # a bug must cost one retry, never the worker
                logger.exception(
                    "Unexpected error on %s", printable(item.rel), extra=log_extra(item)
                )
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, session, f"unexpected {type(exc).__name__}: {exc}")

    async def process(self, item: WorkItem, slot: Slot, session: Session) -> None:
        """Stage, upload and complete one claimed file. Raises UploadError."""
        if item.committed is not None:  # an earlier attempt committed the blob
            await self._complete(item, item.committed)
            self._count_uploaded(item, session, None)
            return
        staged = self.layout.staged(item)
        t = self.telemetry
        with t.step("stage"):
            copied = await self._stage(item, staged, slot)
        if copied is None:  # an earlier attempt committed it and marked it completed
            self._count_uploaded(item, session, None)
            return
        t.set_file_size(copied.size)
        if item.attempt == 0:
            session.bytes_seen += copied.size
        if self._on_staged is not None:
            copied = self._on_staged(staged, copied) or copied
        start = time.monotonic()
        blob_name = self.layout.blob_name(item)
        with t.step("upload", **{"blob.name": printable(blob_name), "file.size": copied.size}):
            sent = await self.storage.upload(
                staged, blob_name, copied, slot.touch, item.overwrite, log_extra(item)
            )
        committed = (copied.size, copied.mtime_ns)
        item = replace(item, blob_name=sent.blob_name, committed=committed, overwrite=False)
        if sent.already:
            logger.info(
                "%s is already in storage as %s with the same bytes",
                printable(item.rel),
                sent.blob_name,
                extra=log_extra(item),
            )
        else:
            t.uploaded(copied.size, time.monotonic() - start)
        if sent.blob_name != blob_name:
            self._renamed(item, session, blob_name)
        if copied.data is None:  # small files were staged in memory
            await anyio.to_thread.run_sync(_remove_staged, staged, item)
        await self._complete(item, committed)
        self._count_uploaded(item, session, 0 if sent.already else copied.size)

    async def _complete(self, item: WorkItem, committed: tuple[int, int]) -> None:
        """Move the claimed file into the completed tree (GC deletes it later), if it still
        has the size and mtime of the bytes committed; raise _LateWrite if not."""
        src, done = self.layout.processing(item), self.layout.completed(item)

        def complete() -> Moved | None:
            try:
                if not fsops.unchanged(src, *committed):
                    return None
            except FileNotFoundError:
                pass  # already moved by an attempt that reported failure: `move` sees it
            return self._move(src, done, committed)

        with self.telemetry.step("complete"):
            try:
                moved = await self.nfs.call(complete)
            except OSError as exc:
                raise _Pending(item, f"blob committed, cannot mark completed: {exc}") from exc
        if moved is None:
            raise _LateWrite(item)
        if moved is Moved.TAKEN:
            raise _Pending(item, "an earlier file of the same name is not yet collected by GC")
        if moved is Moved.GONE:  # neither side is there: GC already took the marker
            logger.info(
                "Completed marker of %s already collected",
                printable(item.rel),
                extra=log_extra(item),
            )
            return
        self.completed[done] = Completed(item, *committed)

    def _count_uploaded(self, item: WorkItem, session: Session, size: int | None) -> None:
        session.pending.pop(item.rel, None)
        session.uploaded += 1
        self.processed_ok += 1
        if size is not None:
            session.bytes_uploaded += size
            self.bytes_uploaded += size
        blob_name = self.layout.blob_name(item)
        logger.info(
            "Uploaded %s",
            blob_name,
            extra={**log_extra(item), "blob_name": printable(blob_name), "size_bytes": size},
        )

    def _renamed(self, item: WorkItem, session: Session, wanted: str) -> None:
        session.renamed += 1
        self.telemetry.renamed()
        text = (
            f"{item.rel}: uploaded as {self.layout.blob_name(item)}; "
            f"{wanted} holds other bytes (kept)"
        )
        session.notice(text)
        logger.warning("Name conflict: %s", printable(text), extra=log_extra(item))

    async def _claim(self, item: WorkItem, session: Session) -> WorkItem:
        """Rename the file from incoming into `.processing`. Raises _Skip if it is not ours
        to take now, NotOurs if it is not a regular file."""
        folder = self.layout.session_folder(item.session_name)
        dst = self.layout.processing(item)
        with self.telemetry.step("claim"):
            try:
                moved = await self.nfs.call(
                    lambda: self._claim_fn(folder, item.rel, dst, item.seen)
                )
            except OSError as exc:
                # Unknown whether the rename happened (NFS can report a failure for a rename
                # that succeeded): retry it; `fsops.move` then sees where the file is.
                raise RetryableError(f"claim failed: {exc}") from exc
        if moved is Moved.TAKEN:
            if item.rel not in session.held:
                session.held.add(item.rel)
                text = f"{item.rel}: waits in incoming until an earlier file of that name is done"
                session.notice(text)
                logger.info("%s", printable(text), extra=log_extra(item))
            raise _Skip
        session.held.discard(item.rel)
        if moved is Moved.GONE:
            logger.debug("Lost the claim race for %s", printable(item.rel), extra=log_extra(item))
            raise _Skip
        session.files_seen += 1
        return replace(item, claimed=True)

    async def _stage(self, item: WorkItem, dst: Path, slot: Slot) -> Copied | None:
        src = self.layout.processing(item)
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
            if exc.filename is None or Path(exc.filename) != src:
                raise RetryableError(f"staging copy failed: {exc}") from exc
            return await self._source_vanished(item, src, exc)
        except OSError as exc:
            await anyio.to_thread.run_sync(_remove_staged, dst, item)
            raise RetryableError(f"staging copy failed: {exc}") from exc

    async def _source_vanished(self, item: WorkItem, src: Path, exc: OSError) -> None:
        done = self.layout.completed(item)
        try:
            completed = await self.nfs.call(lambda: fsops.exists(done))
            still_there = completed or await self.nfs.call(lambda: fsops.exists(src))
        except OSError:
            raise RetryableError(f"source not readable yet: {exc}") from exc
        if completed:  # an earlier attempt committed the blob and marked it completed
            return None
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
        self.last_error = session.last_error = printable(f"{item.rel}: {reason}")
        session.pending[item.rel] = "retrying"
        logger.warning(
            "Upload of %s failed (attempt %d): %s; retrying in %.1f s",
            printable(item.rel),
            attempt,
            printable(reason),
            delay,
            extra=log_extra(item),
        )
        self._retry_seq += 1
        heapq.heappush(
            self._retry_heap,
            (time.monotonic() + delay, self._retry_seq, replace(item, attempt=attempt)),
        )
        self._retry_wakeup.set()

    async def _not_ours(self, item: WorkItem, session: Session, what: str) -> None:
        """Not a regular file of ours: leave it (or put it back) in incoming, and say so."""
        session.pending.pop(item.rel, None)
        session.ignored[item.rel] = what
        text = f"{item.rel}: {what}; left in incoming, not uploaded"
        if item.claimed:
            src, back = self.layout.processing(item), self.layout.incoming(item)
            try:
                returned = await self.nfs.call(lambda: fsops.return_to(src, back))
            except (OSError, NotOurs) as exc:
                returned, text = False, f"{text} (could not put it back: {exc})"
            if not returned:
                text = f"{item.rel}: {what}; left in {src.parent}, not uploaded"
        session.notice(text)
        logger.warning("Not a regular file: %s", printable(text), extra=log_extra(item))

    def late_write(self, item: WorkItem) -> WorkItem:
        """The file changed after its bytes were read: what went up is not the whole file.
        Say so, and return the item that sends it again, whole, over the same blob."""
        session = self.sessions.for_item(item)
        session.late_writes += 1
        self.late_writes += 1
        self.telemetry.late_write()
        blob_name = self.layout.blob_name(item)
        text = (
            f"{item.rel} was written to after it was claimed; uploading the whole file again "
            f"over {blob_name} (APP_MIN_FILE_AGE_S is shorter than the writer's pauses)"
        )
        session.notice(text)
        logger.error("LATE WRITE: %s", printable(text), extra=log_extra(item))
        return replace(item, committed=None, overwrite=True, blob_name=blob_name)

    async def _park(self, item: WorkItem, session: Session, reason: str) -> None:
        """Move the file into the failed tree with its reason; never over a parked file of the
        same name (that one is kept: this one takes the next free name)."""
        record = json.dumps(
            {
                "reason": reason,
                "rel": item.rel,
                "blob_name": self.layout.blob_name(item),
                "at": time.time(),
            }
        ).encode()
        src = self.layout.processing(item)

        def park() -> tuple[Moved, str]:
            # The reason is written first, so the file is never listed without it.
            for version in range(1, MAX_NAME_VERSIONS + 1):
                rel = versioned(item.rel, version)
                if fsops.exists(self.layout.failed(item, rel)):
                    continue
                reason_file = self.layout.reason(item, rel)
                fsops.write_atomic(reason_file, record, ".reason.tmp-")
                moved = self._move(src, self.layout.failed(item, rel), None)
                if moved is not Moved.DONE:
                    reason_file.unlink(missing_ok=True)
                if moved is not Moved.TAKEN:
                    return moved, rel
            raise OSError(f"{MAX_NAME_VERSIONS} parked files are named like {item.rel}")

        try:
            moved, parked_as = await self.nfs.call(park) if item.claimed else (Moved.GONE, "")
        except OSError as exc:
            self._retry_later(item, session, f"{reason} (and parking failed: {exc})")
            return
        session.pending.pop(item.rel, None)
        await anyio.to_thread.run_sync(_remove_staged, self.layout.staged(item), item)
        if moved is Moved.DONE:
            session.parked.add(parked_as)
        self.processed_err += 1
        self.telemetry.failed()
        self.last_error = session.last_error = printable(f"{item.rel}: {reason}")
        where = self.layout.failed(item, parked_as) if moved is Moved.DONE else None
        logger.error(
            "Parked %s: %s%s",
            printable(item.rel),
            printable(reason),
            f"; it is in {printable(str(where))}" if where else "; it had vanished",
            extra=log_extra(item),
        )

    # --- parked files ----------------------------------------------------------------------

    async def list_parked(self) -> list[FailedFile]:
        """Parked files with their reasons, read from the failed tree."""
        return [
            FailedFile(
                date_prefix=p.item.date_prefix,
                session_name=p.item.session_name,
                filename=p.item.rel,
                parked_as=p.parked_as,
                reason=p.reason,
            )
            for p in await self.nfs.call(self._read_parked)
        ]

    def _read_parked(self) -> list["_Parked"]:
        out: list[_Parked] = []
        for date_prefix, name, parked_as, path in fsops.iter_tree_files(self.layout.failed_root):
            item = WorkItem(name, date_prefix, parked_as, claimed=True)
            try:
                record = json.loads(self.layout.reason(item).read_bytes())
                reason, rel = str(record["reason"]), str(record.get("rel", parked_as))
            except (OSError, ValueError, KeyError, TypeError):
                reason, rel = "(reason not recorded)", parked_as
            out.append(_Parked(replace(item, rel=rel), parked_as, path, reason))
        return out

    async def requeue_parked(self, session_name: str | None) -> int:
        """Move parked files back into `.processing` and queue them. Returns how many."""
        async with self._requeuing:
            count = 0
            for parked in await self.nfs.call(self._read_parked):
                item = parked.item
                if session_name is not None and item.session_name != session_name:
                    continue
                moved = await self.nfs.call(functools.partial(self._unpark, parked))
                if moved is Moved.TAKEN:
                    logger.warning(
                        "Parked %s stays parked: a file of that name is in progress",
                        printable(item.rel),
                        extra=log_extra(item),
                    )
                if moved is not Moved.DONE:
                    continue
                self.sessions.for_item(item).parked.discard(parked.parked_as)
                await self.put(item)
                count += 1
            return count

    def _unpark(self, parked: "_Parked") -> Moved:
        moved = self._move(parked.path, self.layout.processing(parked.item), None)
        if moved is Moved.DONE:
            self.layout.reason(parked.item, parked.parked_as).unlink(missing_ok=True)
        return moved


@dataclass(frozen=True, slots=True)
class _Parked:
    item: WorkItem  # with the file's original rel
    parked_as: str  # its rel in the failed tree
    path: Path
    reason: str


def _remove_staged(staged: Path, item: WorkItem) -> None:
    try:
        staged.unlink(missing_ok=True)
    except OSError:
        logger.warning("Could not delete staged copy %s", staged, extra=log_extra(item))


class _Pending(CompletionPending):
    """The blob is committed; retry only the completion of `item`."""

    def __init__(self, item: WorkItem, message: str) -> None:
        super().__init__(message)
        self.item = item


class _Skip(Exception):
    """Not an error: the file was taken by someone else, or stays in incoming for next scan."""
