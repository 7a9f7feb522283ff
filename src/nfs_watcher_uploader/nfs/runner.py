"""`Nfs`: every blocking call on the share runs in a thread, with a deadline.

Every call that touches NFS goes through `Nfs` so that a hung mount (a `hard` mount whose server
went away blocks every syscall) never blocks the event loop: the call is abandoned after
`timeout` seconds and raises TimeoutError (an OSError), which callers treat as transient.

A trip to a thread and back costs the event loop more CPU than a short call on the share
itself (a small file makes four: claim, copy, ledger line, completion). So the trip is kept
lean (daemon threads fed by a C queue, one wake-up of the loop per trip, no cancel scopes),
and the short calls of many files that come at the same moment can share one trip:
`call_batched` calls made in the same turn of the event loop run one after the other in one
thread, each with its own outcome (one call's error is that call's alone) and its own deadline.
"""

import asyncio
import contextvars
import errno
import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nfs_watcher_uploader.constants import (
    BATCH_READERS,
    BATCH_SHARE,
    MAX_ABANDONED_THREADS,
    MAX_BATCHED_CALLS,
    META_THREADS,
    THREAD_IDLE_EXIT_S,
)


class Nfs:
    """Runs blocking filesystem calls in worker threads, each with a deadline.

    Long copies and short metadata calls (scan, rename, stat, state file) have separate thread
    budgets, so no number of slow copies can starve a scan, a stop or a probe. A call abandoned
    at its deadline leaves its thread blocked in the kernel and gives its place in the budget
    back; those threads are counted (`abandoned`), and once MAX_ABANDONED_THREADS are stuck,
    new calls fail at once instead of piling up more threads on a dead mount.
    """

    def __init__(
        self,
        timeout: float,
        copy_threads: int = 16,
        meta_threads: int = META_THREADS,
        max_abandoned: int = MAX_ABANDONED_THREADS,
    ) -> None:
        self.timeout = timeout
        self._meta = asyncio.Semaphore(meta_threads)
        self._copies = asyncio.Semaphore(copy_threads)
        self._max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self._threads = _Threads()
        self.abandoned = 0  # threads still blocked in a call we gave up on
        # The batch that calls of this turn of the event loop join (`call_batched`).
        self._open: _Job | None = None
        self._starting: set[asyncio.Task[None]] = set()
        self.trips = self.batched_calls = 0

    def __repr__(self) -> str:
        return (
            f"Nfs(timeout={self.timeout:g} abandoned={self.abandoned} trips={self.trips} "
            f"batched_calls={self.batched_calls})"
        )

    async def call[T](self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a short call (metadata, small reads and writes) with a deadline."""
        self._check_hung()
        deadline = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._run(fn, self._meta)
        except TimeoutError:
            raise _timed_out(deadline) from None

    async def call_batched[T](self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Like `call`, for a short call that may share its thread: calls made in the same turn
        of the event loop (up to MAX_BATCHED_CALLS) run one after the other in one thread, in
        the order they were made. Each returns or raises its own outcome, within its own
        deadline; a call given up before its turn in the thread never runs, and one that ran
        to its end before a later call of its batch hung gets its own outcome at its deadline
        (outcomes are handed over once per batch: one wake-up of the loop)."""
        self._check_hung()
        deadline = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        job = self._open
        if job is None or len(job.calls) >= MAX_BATCHED_CALLS:
            job = self._open = _Job(self, loop, self._meta)
            # After the callers of this turn, which join the batch in the meantime.
            loop.call_soon(self._dispatch, job)
        call = job.add(fn)
        self.batched_calls += 1
        try:
            async with asyncio.timeout(deadline):
                return await call.future
        except TimeoutError:
            job.give_up(call)
            if job.ran(call):  # to its end; a later call of its batch held the hand-over up
                if call.error is not None:
                    raise call.error from None
                return call.result
            raise _timed_out(deadline) from None
        except BaseException:
            job.give_up(call)
            raise

    def _dispatch(self, job: "_Job") -> None:
        if self._open is job:
            self._open = None
        task = asyncio.ensure_future(self._start(job))
        self._starting.add(task)  # kept until it started; every outcome goes to its caller
        task.add_done_callback(self._starting.discard)

    async def _start(self, job: "_Job") -> None:
        try:
            await job.lane.acquire()
        except BaseException:  # cancelled at shutdown: nothing ran
            job.abort()
            raise
        job.holds_lane = True
        self._go(job)

    async def call_watched[T](self, fn: Callable[[], T], last_progress: Callable[[], float]) -> T:
        """Like `call` for long copies: no overall deadline, but give up once `last_progress()`
        (a monotonic time the function updates as it goes) is older than the timeout."""
        self._check_hung()
        task = asyncio.ensure_future(self._run(fn, self._copies))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.timeout / 4)
                if done:
                    return task.result()
                if time.monotonic() - last_progress() > self.timeout:
                    raise TimeoutError(errno.ETIMEDOUT, f"NFS copy stalled for {self.timeout:g} s")
        finally:
            task.cancel()

    async def in_batches[K, R](
        self,
        keys: Sequence[K],
        read: Callable[[Sequence[K], float], list[R]],
        readers: int = BATCH_READERS,
    ) -> list[R]:
        """`read` every key, in as many calls as it takes, each stopping after BATCH_SHARE of
        the deadline (`read(keys, budget)` reads from the start of `keys`, at least one, until
        `budget` seconds are spent), `readers` calls at once: no number of keys makes a call
        run into its deadline. The results, in the order of `keys`."""
        budget = self.timeout * BATCH_SHARE
        found: dict[int, R] = {}

        async def reader(first: int) -> None:
            todo = list(range(first, len(keys), readers))
            while todo:
                batch = [keys[i] for i in todo]
                got = await self.call(functools.partial(read, batch, budget))
                if not got:
                    raise RuntimeError("a batch read nothing")
                found.update(zip(todo, got, strict=False))
                todo = todo[len(got) :]

        try:
            async with asyncio.TaskGroup() as tg:
                for first in range(min(readers, len(keys))):
                    tg.create_task(reader(first))
        except ExceptionGroup as group:  # the first failure speaks for the listing
            raise group.exceptions[0] from None
        return [found[i] for i in range(len(keys))]

    def _check_hung(self) -> None:
        if self.abandoned >= self._max_abandoned:
            raise TimeoutError(
                errno.ETIMEDOUT, f"NFS is not answering: {self.abandoned} calls are still hung"
            )

    async def _run[T](self, fn: Callable[[], T], lane: asyncio.Semaphore) -> T:
        """`fn` alone in a thread, once `lane` has room. Given up before it started, it never
        runs; given up while it runs, its thread is counted as abandoned until it returns."""
        job = _Job(self, asyncio.get_running_loop(), lane)
        call = job.add(fn)
        await lane.acquire()
        job.holds_lane = True
        self._go(job)
        try:
            return await call.future
        except BaseException:
            job.give_up(call)
            raise

    def _go(self, job: "_Job") -> None:
        self.trips += 1
        self._threads.submit(job)


def _timed_out(deadline: float) -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, f"NFS call timed out after {deadline:g} s")


@dataclass(eq=False)
class _Call:
    """One call of a job: what to run and how it went. `started`, `finished`, `given_up` and
    `abandoned` are read and written under `Nfs._lock` (from the loop and the job's thread)."""

    fn: Callable[[], Any]
    future: "asyncio.Future[Any]"
    # The caller's context variables, as `asyncio.to_thread` passes them: what the call
    # starts on the loop from its thread (an early block's send) works for the caller's file.
    context: contextvars.Context
    result: Any = None
    error: BaseException | None = None
    started: bool = False
    finished: bool = False
    given_up: bool = False
    abandoned: bool = False


@dataclass(eq=False)
class _Job:
    """What one trip to a thread runs: one call, or the batch of a turn; it holds a place in
    its lane from the moment it is handed to a thread until it is done or all its callers gave
    up (touched on the loop only)."""

    nfs: Nfs
    loop: asyncio.AbstractEventLoop
    lane: asyncio.Semaphore
    calls: list[_Call] = field(default_factory=list[_Call])
    holds_lane: bool = False

    def add(self, fn: Callable[[], Any]) -> _Call:
        call = _Call(fn, self.loop.create_future(), contextvars.copy_context())
        self.calls.append(call)
        return call

    def run(self) -> None:
        """In the thread: each call not given up, in order; then back to the loop, once."""
        nfs = self.nfs
        for call in self.calls:
            with nfs._lock:  # pyright: ignore[reportPrivateUsage]
                if call.given_up:
                    continue
                call.started = True
            try:
                call.result = call.context.run(call.fn)
            except BaseException as exc:  # that call's outcome, not the job's
                call.error = exc
            finally:
                with nfs._lock:  # pyright: ignore[reportPrivateUsage]
                    call.finished = True
                    if call.abandoned:
                        nfs.abandoned -= 1
        try:
            self.loop.call_soon_threadsafe(self.finish)
        except RuntimeError:  # the loop is closed: the process is stopping
            pass

    def finish(self) -> None:
        """On the loop: hand each outcome to its caller, and give the lane's place back."""
        for call in self.calls:
            if call.future.done():  # given up
                continue
            if call.error is not None:
                call.future.set_exception(call.error)
            else:
                call.future.set_result(call.result)
        self._release()

    def give_up(self, call: _Call) -> None:
        """On the loop: the caller of `call` stopped waiting (deadline, cancellation)."""
        nfs = self.nfs
        if not call.future.done():
            call.future.cancel()
        with nfs._lock:  # pyright: ignore[reportPrivateUsage]
            call.given_up = True
            if call.started and not call.finished and not call.abandoned:
                call.abandoned = True
                nfs.abandoned += 1
            everyone_gone = all(c.given_up or c.finished for c in self.calls)
        if everyone_gone:  # a hung call keeps its thread, not its place
            self._release()

    def ran(self, call: _Call) -> bool:
        """`call` ran to its end in the thread (its outcome is set, if not yet handed over)."""
        with self.nfs._lock:  # pyright: ignore[reportPrivateUsage]
            return call.finished

    def abort(self) -> None:
        for call in self.calls:
            if not call.future.done():
                call.future.set_exception(OSError(errno.EINTR, "NFS call not started: stopping"))

    def _release(self) -> None:
        if self.holds_lane:
            self.holds_lane = False
            self.lane.release()


class _Threads:
    """Daemon threads that run jobs from one queue (a C SimpleQueue: handing a job over costs
    no Python-level lock). A thread is started when none is idle, and an idle one ends after
    THREAD_IDLE_EXIT_S. Daemon: a thread blocked on a dead mount never holds up the exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0

    def submit(self, job: _Job) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # that one takes it
        self._jobs.put(job)
        if spawn:
            self.started += 1
            threading.Thread(target=self._work, name="nfs", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=THREAD_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # not promised to a job meanwhile
                        self._idle -= 1
                        return
                continue
            job.run()
            with self._lock:
                self._idle += 1


def until_spent[K, R](keys: Sequence[K], budget: float, read: Callable[[K], R]) -> list[R]:
    """`read` each key from the start of `keys`, at least one, until `budget` seconds are
    spent: the body of a batch for `Nfs.in_batches` (blocking)."""
    start = time.monotonic()
    out: list[R] = []
    for key in keys:
        out.append(read(key))
        if time.monotonic() - start > budget:
            break
    return out
