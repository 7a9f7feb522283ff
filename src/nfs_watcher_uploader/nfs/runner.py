"""`Nfs`: every blocking call on the share runs in a thread, with a deadline.

Every call that touches NFS goes through `Nfs` so that a hung mount (a `hard` mount whose server
went away blocks every syscall) never blocks the event loop: the call is abandoned after
`timeout` seconds and raises TimeoutError (an OSError), which callers treat as transient.
"""

import asyncio
import errno
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread

from nfs_watcher_uploader.constants import (
    BATCH_READERS,
    BATCH_SHARE,
    MAX_ABANDONED_THREADS,
    META_THREADS,
)


class Nfs:
    """Runs blocking filesystem calls in worker threads, each with a deadline.

    Long copies and short metadata calls (scan, rename, stat, state file) have separate thread
    budgets, so no number of slow copies can starve a scan, a stop or a probe. A call abandoned
    at its deadline leaves its thread blocked in the kernel; those threads are counted
    (`abandoned`), and once MAX_ABANDONED_THREADS are stuck, new calls fail at once instead of
    piling up more threads on a dead mount.
    """

    def __init__(
        self,
        timeout: float,
        copy_threads: int = 16,
        meta_threads: int = META_THREADS,
        max_abandoned: int = MAX_ABANDONED_THREADS,
    ) -> None:
        self.timeout = timeout
        self._meta = anyio.CapacityLimiter(meta_threads)
        self._copies = anyio.CapacityLimiter(copy_threads)
        self._max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self.abandoned = 0  # threads still blocked in a call we gave up on

    def __repr__(self) -> str:
        return f"Nfs(timeout={self.timeout:g} abandoned={self.abandoned})"

    async def call[T](self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a short call (metadata, small reads and writes) with a deadline."""
        self._check_hung()
        deadline = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(deadline):
                return await self._run(fn, self._meta)
        except TimeoutError:
            raise TimeoutError(
                errno.ETIMEDOUT, f"NFS call timed out after {deadline:g} s"
            ) from None

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

    async def _run[T](self, fn: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
        state = _Call()

        def run() -> T:
            with self._lock:
                state.started = True
            try:
                return fn()
            finally:
                with self._lock:
                    state.finished = True
                    if state.abandoned:
                        self.abandoned -= 1

        try:
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
        except BaseException:
            # Given up while the thread is inside `fn`: it stays blocked until NFS answers.
            # (Given up before it started, it never runs.)
            with self._lock:
                if state.started and not state.finished:
                    state.abandoned = True
                    self.abandoned += 1
            raise


@dataclass
class _Call:
    started: bool = False
    finished: bool = False
    abandoned: bool = False


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
