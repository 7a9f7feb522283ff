"""The pipeline: a queue of files, workers that each take one at a time through `Transfer`,
and what happens to a file that does not go up at once.

    RetryableError     tried again after 1 s, 2 s, 4 s ... capped at APP_RETRY_MAX_S, with
                       jitter (a `backoff.DueQueue`), for as long as it takes
    PermanentError     parked with its reason (`ParkedFiles`), never deleted
    NotOurs            left in (or put back into) incoming, reported
    LateWrite          queued again to go up whole over the same blob
    Skip               dropped; the watcher offers it again if it is still there

A file has at most one piece of work at a time: `put` refuses a file already queued, in
flight or retrying. The queue is bounded (APP_MAX_QUEUE_SIZE), and nothing that a worker calls
waits for room in it: the watcher's `offer` takes a place only if there is one (else the file
is offered again at a later scan), and work put back (retries, late writes, recovery, GC,
requeued parked files) goes to an unbounded backlog that a feeder moves into the queue as room
comes, so a worker never blocks on its own full queue.
"""

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass, field, replace

import anyio.to_thread

from nfs_watcher_uploader import errors
from nfs_watcher_uploader.backoff import DueQueue, backoff_delay
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.delivery import Delivery
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.items import Stats, WorkItem, error_text, log_extra, printable
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.telemetry import Telemetry
from nfs_watcher_uploader.uplink.wire import SENDING
from nfs_watcher_uploader.work.completions import CompletedFiles
from nfs_watcher_uploader.work.context import ALONE, Context, Replica, Seams
from nfs_watcher_uploader.work.order import WorkQueue
from nfs_watcher_uploader.work.parked import ParkedFiles
from nfs_watcher_uploader.work.progress import FileProgress, FileState, InFlight
from nfs_watcher_uploader.work.staging import remove_staged
from nfs_watcher_uploader.work.transfer import Transfer

logger = logging.getLogger(__name__)


@dataclass
class Slot:
    """One worker: its task, the file it is on (and how far it is), and when it last made
    progress."""

    task: asyncio.Task[None] | None = None
    item: WorkItem | None = None
    progress: float = field(default_factory=time.monotonic)
    file: FileProgress | None = None

    def touch(self) -> None:
        self.progress = time.monotonic()

    def enter(self, state: FileState, size: int | None = None) -> None:
        """The file entered the step `state` (for the API's view of files in flight)."""
        self.touch()
        if self.file is not None:
            self.file.enter(state, self.progress, size)


class Pipeline:
    """The queue, the workers and the counters that /v1/status reports."""

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        storage: Storage,
        nfs: Nfs,
        telemetry: Telemetry,
        rng: random.Random | None = None,
        seams: Seams | None = None,
        delivery: Delivery | None = None,
        replica: Replica = ALONE,
    ) -> None:
        self.settings = settings
        self.layout = Layout.from_settings(settings)
        self.delivery = delivery or Delivery.from_settings(settings, self.layout, nfs)
        self.sessions = sessions
        self.telemetry = telemetry
        self.stats = Stats()
        # Files marked completed, for GC's last look.
        self.completed = CompletedFiles()
        context = Context(self.layout, sessions, nfs, telemetry, self.stats, self.delivery, replica)
        seams = seams or Seams()
        self.transfer = Transfer(context, storage, self.completed, seams, settings.allow_hard_links)
        self.parked = ParkedFiles(context, self.put, seams.move)
        self._rng = rng or random.Random()
        # Both hand files on in APP_UPLOAD_ORDER.
        self.queue: asyncio.Queue[WorkItem] = WorkQueue(
            settings.max_queue_size, settings.upload_order
        )
        self._backlog: asyncio.Queue[WorkItem] = WorkQueue(0, settings.upload_order)
        self.slots = [Slot() for _ in range(settings.worker_concurrency)]
        # How far each file taken by a worker is (the API's files in flight).
        self.progress = InFlight()
        # Files waiting for their next attempt (keys: only to tell them apart).
        self._retrying = DueQueue[int, WorkItem]((settings.retry_base_s, settings.retry_max_s))
        self._retry_keys = itertools.count()
        self._helpers: list[asyncio.Task[None]] = []
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"Pipeline({self.stats!r} queued={self.queued} in_flight={self.in_flight} "
            f"retrying={self.retrying})"
        )

    @property
    def queued(self) -> int:
        return self.queue.qsize() + self._backlog.qsize()

    @property
    def in_flight(self) -> int:
        return sum(1 for s in self.slots if s.item is not None)

    @property
    def retrying(self) -> int:
        return len(self._retrying)

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
        self.sessions.for_item(item).mark(item, "queued")
        return True

    def put(self, item: WorkItem) -> bool:
        """Queue `item` (recovery, GC, requeues of parked files). A file that already has work
        queued, in flight or retrying is not queued twice: False."""
        if item.place in self.sessions.for_item(item).pending:
            logger.debug("%s is already in progress", printable(item.rel), extra=log_extra(item))
            return False
        self._requeue(item)
        return True

    async def resend_whole(self, item: WorkItem) -> bool:
        """A completed file changed after its upload (GC found it written to): say so, and
        queue it to go up again, whole, over the same blob (`put`: not if it has work)."""
        return self.put(await self.transfer.late_write(item))

    def _requeue(self, item: WorkItem) -> None:
        self.sessions.for_item(item).mark(item, "queued")
        self._backlog.put_nowait(item)

    async def _due(self) -> None:
        """Put each file waiting for its next attempt back in line when its time comes."""
        while True:
            key, item = await self._retrying.next()
            self._retrying.done(key)
            self._requeue(item)

    async def _feed(self) -> None:
        while True:
            await self.queue.put(await self._backlog.get())

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers, the retries and the feeder until cancelled or `shutdown`."""
        async with asyncio.TaskGroup() as tg:
            for slot in self.slots:
                slot.task = tg.create_task(self._worker(slot))
            self._helpers = [tg.create_task(self._due()), tg.create_task(self._feed())]

    async def shutdown(self, grace: float) -> None:
        """Stop taking work, let in-flight files finish within `grace`, then cancel the rest
        (they stay in `.processing` and are recovered on the next start)."""
        self._stopping = True
        for task in self._helpers:
            task.cancel()
        for slot in self.slots:
            if slot.item is None and slot.task is not None:
                slot.task.cancel()
        busy = {s.task for s in self.slots if s.task is not None and not s.task.done()}
        if not busy:
            return
        _, late = await asyncio.wait(busy, timeout=grace)
        for slot in self.slots:
            if slot.task in late:
                item = slot.item
                logger.warning(
                    "Shutdown grace over; cancelling the upload of %s (recovered on restart)",
                    printable(item.rel) if item else "?",
                    extra=log_extra(item) if item else None,
                )
                slot.task.cancel()

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

    async def _handle(self, item: WorkItem, slot: Slot) -> None:
        file = slot.file = self.progress.take(item)
        # Every body byte sent for this file, in this task and the tasks it starts (early
        # blocks), is counted on `file` (uplink/wire).
        counting = SENDING.set(file)
        try:
            await self._attempt(item, slot)
        finally:
            SENDING.reset(counting)
            slot.file = None
            if file.state != "retrying":
                self.progress.forget(item)

    async def _attempt(self, item: WorkItem, slot: Slot) -> None:
        session = self.sessions.for_item(item)
        session.mark(item, "in_flight")
        with self.telemetry.file_span(item, self.layout.blob_name(item)) as span:
            try:
                ahead = None
                if not item.claimed:
                    item, ahead = await self.transfer.claim(item, session, slot)
                await self.transfer.process(item, slot, session, ahead)
            except errors.Skip:
                session.release(item)
            except errors.NotOurs as exc:
                await self.transfer.put_back(item, session, str(exc))
            except errors.LateWrite as exc:
                self._requeue(await self.transfer.late_write(exc.item))
            except errors.CompletionPending as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(exc.item, str(exc))
            except errors.RetryableError as exc:
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, str(exc))
            except errors.PermanentError as exc:
                self.telemetry.failed_attempt(span, exc)
                await self._park(item, str(exc))
            except Exception as exc:  # a bug must cost one retry, never the worker
                logger.exception(
                    "Unexpected error on %s", printable(item.rel), extra=log_extra(item)
                )
                self.telemetry.failed_attempt(span, exc)
                self._retry_later(item, f"unexpected {type(exc).__name__}: {exc}")

    def _retry_later(self, item: WorkItem, reason: str) -> None:
        session = self.sessions.for_item(item)
        attempt = item.attempt + 1
        s = self.settings
        delay = backoff_delay(attempt, s.retry_base_s, s.retry_max_s, self._rng)
        self.stats.retries += 1
        self.telemetry.retried()
        self.stats.last_error = error_text(f"{item.rel}: {reason}")
        session.fail(f"{item.rel}: {reason}")
        session.mark(item, "retrying")
        logger.warning(
            "Upload of %s failed (attempt %d): %s; retrying in %.1f s",
            printable(item.rel),
            attempt,
            error_text(reason),
            delay,
            extra=log_extra(item),
        )
        self._retrying.add(next(self._retry_keys), replace(item, attempt=attempt), delay)
        self.progress.retrying(item, time.time() + delay, error_text(reason))

    async def _park(self, item: WorkItem, reason: str) -> None:
        if not item.claimed:  # nothing of ours to park
            self.sessions.for_item(item).release(item)
            return
        try:
            await self.parked.park(item, reason)
        except OSError as exc:
            self._retry_later(item, f"{reason} (and parking failed: {exc})")
            return
        await anyio.to_thread.run_sync(remove_staged, self.layout.staged(item), item)
