"""Early blocks: the blocks of a large file staged in storage while the file is still being
read from NFS, so that reading, hashing and sending overlap.

The copy thread hands each block, once read, hashed and written to staging, to `offer`; it
goes out at once under the id the upload will use (`block_ids.block_id`) with its MD5 as the
transactional Content-MD5, which Azure checks. Nothing is committed here: the upload
that follows the copy finds these blocks in the blob's uncommitted list, exactly as after a
restart, and commits the block list only after the whole file was read and its size checked.
So the proof of bytes is the one it always was. Sending early is only a head start: a block
that fails here is sent again from the staging file by the upload.

The copy thread waits in `offer` for the same block permits as every upload (memory stays
bounded; a slow link slows the copy instead of filling memory). Waiting counts as progress.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nfs_watcher_uploader.constants import BANDWIDTH_WAIT_TICK_S
from nfs_watcher_uploader.items import printable

logger = logging.getLogger(__name__)


async def acquire_waiting(semaphore: asyncio.Semaphore, waiting: Callable[[], None]) -> None:
    """Acquire `semaphore`, calling `waiting` at least once a second meanwhile."""
    while True:
        try:
            async with asyncio.timeout(BANDWIDTH_WAIT_TICK_S):
                await semaphore.acquire()
            return
        except TimeoutError:
            waiting()


class EarlyBlocks:
    """The blocks of one file sent while it is read. Owned by the transfer of that file, which
    calls `settle` once the copy is done and `cancel` on every path."""

    def __init__(
        self,
        blob_name: str,
        stage: Callable[[str, bytes, bytes], Awaitable[None]],
        block_id: Callable[[int, bytes], str],
        budget: asyncio.Semaphore,
        concurrency: int,
        progress: Callable[[], None],
        held: dict[str, int],
    ) -> None:
        self._blob_name = blob_name
        # Puts one block: (id, bytes, MD5).
        self._stage = stage
        # Blocks an earlier attempt staged (id -> size): not sent again.
        self._held = held
        self._block_id = block_id
        self._budget = budget
        self._window = asyncio.Semaphore(concurrency)
        self._progress = progress
        self._tasks: set[asyncio.Task[None]] = set()
        # Made on the loop; `offer` is called from the copy's thread.
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self.sent = self.failed = 0
        # The ids of the blocks this upload staged: the upload's log tells them apart from
        # blocks an earlier attempt left.
        self.sent_ids: set[str] = set()

    def __repr__(self) -> str:
        return f"EarlyBlocks({printable(self._blob_name)} sent={self.sent} failed={self.failed})"

    def offer(self, index: int, data: bytes, md5: bytes) -> None:
        """From the copy thread: send this block; returns once it is under way."""
        if self._held.get(self._block_id(index, md5)) == len(data):
            return
        asyncio.run_coroutine_threadsafe(self._start(index, data, md5), self._loop).result()

    async def _start(self, index: int, data: bytes, md5: bytes) -> None:
        await acquire_waiting(self._window, self._progress)
        try:
            await acquire_waiting(self._budget, self._progress)
        except BaseException:
            self._window.release()
            raise
        if self._closed:  # cancelled while this block waited: no task that nobody awaits
            self._budget.release()
            self._window.release()
            raise RuntimeError("the transfer of this file was given up")
        task = asyncio.create_task(self._send(index, data, md5))
        self._tasks.add(task)
        # In a callback, not in the task: one cancelled before it ran gives its permits back too.
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._budget.release()
        self._window.release()
        self._progress()

    async def _send(self, index: int, data: bytes, md5: bytes) -> None:
        block_id = self._block_id(index, md5)
        try:
            await self._stage(block_id, data, md5)
            self.sent += 1
            self.sent_ids.add(block_id)
        except Exception as exc:  # the upload sends it again from staging
            self.failed += 1
            logger.debug("Early block %d of %s failed: %s", index, self._blob_name, exc)

    async def settle(self) -> None:
        """Wait for the blocks under way, so that the upload's list of uncommitted blocks has
        them (none is sent twice)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Stop what is under way (the copy failed, or the worker is cancelled)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
