"""Files sent in blocks: the budget of block bytes in memory, the keyed block ids, and staging
every block Azure does not hold yet (resume), after the copy or while it runs (early blocks).

A block's id is its index and a keyed MD5 (`block_ids`), so an uncommitted block of a blob with
the same id and size holds the same bytes (Azure checked its MD5 when it was staged): after a
retry or a restart, those are not sent again. Two uploads that stage blocks on one blob name at
once (both found the name free) never mix their blocks in a commit.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from functools import partial

import anyio.to_thread

from nfs_watcher_uploader.blob.block_ids import block_id
from nfs_watcher_uploader.blob.early import EarlyBlocks
from nfs_watcher_uploader.blob.rest import Rest
from nfs_watcher_uploader.errors import IntegrityError
from nfs_watcher_uploader.items import printable
from nfs_watcher_uploader.nfs.copying import Staged
from nfs_watcher_uploader.uplink.wire import already_in_storage

logger = logging.getLogger(__name__)

# Bytes of blocks in memory at once, across all uploads: keeps RSS bounded whatever the number
# of workers times the per-file concurrency.
BLOCK_BUDGET_BYTES = 64 * 1024 * 1024


class Blocks:
    """Blocks of `size` bytes, at most `concurrency` in flight per file, and the budget across
    all files."""

    def __init__(self, size: int, concurrency: int) -> None:
        self.size = size
        self.concurrency = concurrency
        self._budget = asyncio.Semaphore(max(2, BLOCK_BUDGET_BYTES // size))
        # Keys block ids (see `block_id`). The service sets the one kept on NFS, so that blocks
        # staged before a restart are recognised after it; until then, one of this process.
        self.key = os.urandom(32)

    def __repr__(self) -> str:
        return f"Blocks(size={self.size} concurrency={self.concurrency})"

    def early(
        self, rest: Rest, blob_name: str, progress: Callable[[], None], held: dict[str, int]
    ) -> EarlyBlocks:
        """Blocks of `blob_name` sent while its file is read; `held` are already in storage."""
        ids = partial(block_id, self.key)
        stage = partial(rest.put_block, blob_name)
        return EarlyBlocks(blob_name, stage, ids, self._budget, self.concurrency, progress, held)

    async def put(
        self,
        rest: Rest,
        blob_name: str,
        fd: int,
        staged: Staged,
        held: dict[str, int],
        progress: Callable[[], None],
        log_extra: dict[str, str] | None,
    ) -> list[str]:
        """Stage every block of the staged file `fd` that `held` (the blob's uncommitted blocks:
        id -> size) does not have, at most `concurrency` at once for this file and the budget
        across all files; return the ids to commit. Each block is read only once its budget
        permit is held, and the permit is released by `async with` on every path (failure,
        cancellation)."""
        count = len(staged.block_md5s)
        ids = [block_id(self.key, i, md5) for i, md5 in enumerate(staged.block_md5s)]
        window = asyncio.Semaphore(self.concurrency)
        resumed = 0

        async def put(index: int) -> None:
            nonlocal resumed
            offset = index * staged.block_size
            length = min(staged.block_size, staged.read.size - offset)
            if held.get(ids[index]) == length:
                resumed += 1
                if ids[index] not in staged.sent_early:  # sent early: counted as it went
                    already_in_storage(length)
                return
            async with self._budget:
                data = await anyio.to_thread.run_sync(os.pread, fd, length, offset)
                if len(data) != length:  # the staged copy is shorter than what was read
                    check_length(offset + len(data), staged, log_extra)
                await rest.put_block(blob_name, ids[index], data, staged.block_md5s[index])
            progress()

        async with asyncio.TaskGroup() as tg:
            for index in range(count):
                await window.acquire()
                tg.create_task(put(index)).add_done_callback(lambda _: window.release())
        longer = await anyio.to_thread.run_sync(os.pread, fd, 1, staged.read.size)
        check_length(staged.read.size + len(longer), staged, log_extra)
        _log_blocks_found(blob_name, ids, held, staged, resumed, log_extra)
        return ids


def _log_blocks_found(
    name: str,
    ids: list[str],
    held: dict[str, int],
    staged: Staged,
    resumed: int,
    log_extra: dict[str, str] | None,
) -> None:
    """Say where the blocks found in storage came from: sent by this upload while the file was
    read (the usual way of a large file), or left by an earlier attempt (a resume)."""
    if not resumed:
        return
    early = sum(1 for i in staged.sent_early.intersection(ids) if i in held)
    earlier = resumed - early
    blob = printable(name)
    if earlier:
        logger.info(
            "%s: resumed: %d of %d blocks were in storage from an earlier attempt, not sent "
            "again%s",
            blob,
            earlier,
            len(ids),
            f"; {early} sent while the file was read" if early else "",
            extra=log_extra,
        )
    else:
        logger.info(
            "%s: %d of %d blocks sent while the file was read, the rest now",
            blob,
            early,
            len(ids),
            extra=log_extra,
        )


def log_mismatch(reason: str, log_extra: dict[str, str] | None) -> None:
    logger.error("INTEGRITY MISMATCH: %s; not committing", reason, extra=log_extra)


def check_length(sent: int, staged: Staged, log_extra: dict[str, str] | None) -> None:
    """The staged copy holds as many bytes as were read from NFS, or IntegrityError."""
    if sent != staged.read.size:
        reason = f"staged copy has {sent} bytes, {staged.read.size} were read from NFS"
        log_mismatch(reason, log_extra)
        raise IntegrityError(reason)
