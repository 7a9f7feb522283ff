"""Parked files: files that cannot succeed by retrying, kept with their reason, never deleted.

    .processing/_failed/<d>/<s>/<rel>          the file
    .processing/_failed_reasons/<d>/<s>/<rel>  {"reason", "rel", "blob_name", "at"}

A second file parked under a name already parked takes the next free name (`name~2`); the
reason file keeps its original path, so a requeue puts it back where it came from. A park is
announced (`file.parked`); a requeue makes a session that had ended drain again, so that it
ends anew, with a new manifest.
"""

import asyncio
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from nfs_watcher_uploader.constants import MAX_NAME_VERSIONS
from nfs_watcher_uploader.items import ParkedFile, WorkItem, log_extra, printable
from nfs_watcher_uploader.nfs import moves, state, trees
from nfs_watcher_uploader.nfs.layout import versioned
from nfs_watcher_uploader.nfs.moves import Moved
from nfs_watcher_uploader.work.context import Context, MoveFn

logger = logging.getLogger(__name__)

# The reason shown for a parked file whose reason file is missing or unreadable.
NOT_RECORDED = "(reason not recorded)"


@dataclass(frozen=True, slots=True)
class _Parked:
    item: WorkItem  # with the file's original rel
    parked_as: str  # its rel in the parked tree
    path: Path
    reason: str


class ParkedFiles:
    """Park, list and requeue parked files. `requeue` queues an item (Pipeline.put)."""

    def __init__(
        self,
        context: Context,
        requeue: Callable[[WorkItem], bool],
        move: MoveFn = moves.move,
    ) -> None:
        self.layout, self.sessions, self.nfs = context.layout, context.sessions, context.nfs
        self.telemetry, self.stats = context.telemetry, context.stats
        self.webhooks = context.delivery.webhooks
        self._requeue, self._move = requeue, move
        # Held while parked files leave the parked tree (requeue, dismissals): two at once
        # would both list the same files.
        self.changing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ParkedFiles(parked={self.sessions.parked()})"

    async def park(self, item: WorkItem, reason: str) -> None:
        """Move the claimed file into the parked tree with its reason. Raises OSError when NFS
        fails (the caller retries later); nothing is ever parked over another parked file."""
        blob_name = self.layout.blob_name(item)
        record = json.dumps(
            {"reason": reason, "rel": item.rel, "blob_name": blob_name, "at": time.time()}
        ).encode()
        moved, parked_as = await self.nfs.call(lambda: self._park(item, record))
        error = f"{item.rel}: {reason}"
        done = moved is Moved.DONE
        self.sessions.for_item(item).park(item, parked_as if done else None, error)
        self.stats.parked += 1
        self.stats.last_error = printable(error)
        self.telemetry.parked()
        where = self.layout.parked(item, parked_as) if done else None
        logger.error(
            "Parked %s: %s%s",
            printable(item.rel),
            printable(reason),
            f"; it is in {printable(str(where))}" if where else "; it had vanished",
            extra=log_extra(item),
        )
        if done:
            data = {
                "session": item.session_name,
                "date_prefix": item.date_prefix,
                "path": printable(item.rel),
                "parked_as": printable(parked_as),
                "blob_name": printable(blob_name),
                "reason": printable(reason),
            }
            await self.webhooks.emit("file.parked", data)

    def _park(self, item: WorkItem, record: bytes) -> tuple[Moved, str]:
        src = self.layout.processing(item)
        # The reason is written first, so the file is never listed without it.
        for version in range(1, MAX_NAME_VERSIONS + 1):
            rel = versioned(item.rel, version)
            if moves.exists(self.layout.parked(item, rel)):
                continue
            reason_file = self.layout.reason(item, rel)
            state.write_atomic(reason_file, record, ".reason.tmp-")
            moved = self._move(src, self.layout.parked(item, rel), None)
            if moved is not Moved.DONE:
                reason_file.unlink(missing_ok=True)
            if moved is not Moved.TAKEN:
                return moved, rel
        raise OSError(f"{MAX_NAME_VERSIONS} parked files are named like {item.rel}")

    async def listing(self, limit: int | None = None) -> list[ParkedFile]:
        """Parked files with their reasons, read from the parked tree (the first `limit` in
        name order: their reasons only are read)."""
        return [
            ParkedFile(p.item.date_prefix, p.item.session_name, p.item.rel, p.parked_as, p.reason)
            for p in await self.nfs.call(lambda: self._read(limit))
        ]

    def _read(self, limit: int | None = None) -> list[_Parked]:
        out: list[_Parked] = []
        found = trees.iter_tree_files(self.layout.parked_root)
        for date_prefix, name, parked_as, path in itertools.islice(found, limit):
            item = WorkItem(name, date_prefix, parked_as, claimed=True)
            try:
                record = json.loads(self.layout.reason(item).read_bytes())
                reason, rel = str(record["reason"]), str(record.get("rel", parked_as))
            except (OSError, ValueError, KeyError, TypeError):
                reason, rel = NOT_RECORDED, parked_as
            out.append(_Parked(replace(item, rel=rel), parked_as, path, reason))
        return out

    async def requeue(self, session_name: str | None, parked_as: str | None = None) -> int:
        """Move parked files back into `.processing` and queue them: all, a session's, or the
        session's file `parked_as` (its name as NFS holds it, or as the listing shows it:
        printable). Returns how many."""
        async with self.changing:
            count = 0
            for parked in await self.nfs.call(self._read):
                item = parked.item
                if session_name is not None and item.session_name != session_name:
                    continue
                if parked_as is not None and parked_as not in (
                    parked.parked_as,
                    printable(parked.parked_as),
                ):
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
                session = self.sessions.for_item(item)
                session.unpark(parked.parked_as)
                await self.sessions.reopen(session)
                self._requeue(item)
                count += 1
            return count

    def _unpark(self, parked: _Parked) -> Moved:
        moved = self._move(parked.path, self.layout.processing(parked.item), None)
        if moved is Moved.DONE:
            self.layout.reason(parked.item, parked.parked_as).unlink(missing_ok=True)
        return moved
