"""One file's transfer, step by step, top to bottom.

    claim     rename incoming/<s>/<rel> -> .processing/<d>/<s>/<rel>, never through a link
              (lost race: Skip; the name still taken by an earlier file: Skip, it waits)
    stage     copy to local staging, hashing the bytes read from NFS (per block too); a small
              file is read into memory in the same trip to a thread as its claim
    upload    every request carries the MD5 read from NFS, so Azure refuses changed bytes; a
              name held by other bytes is kept, and this file goes up under the next free name
    record    append the blob's line to the session's ledger (for the manifest), fsynced
    complete  if the file still has the size and mtime that were read, rename it into
              .processing/_completed/<d>/<s>/<rel>; GC looks once more, then deletes it
              (record and complete: one trip to a thread, shared with the files that finish
              at the same moment)

Each step raises what errors.py says the caller should do; `Pipeline` acts on it. A file is
counted as uploaded only after its blob is committed and the file is marked completed.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader.blob.early import EarlyBlocks
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.ledger import Ticket
from nfs_watcher_uploader.cloud.webhooks import event_id
from nfs_watcher_uploader.constants import OVERLAP_MIN_BYTES
from nfs_watcher_uploader.errors import (
    CompletionPending,
    LateWrite,
    NotOurs,
    PermanentError,
    RetryableError,
    Skip,
    nfs_errors,
)
from nfs_watcher_uploader.items import WorkItem, log_extra, printable
from nfs_watcher_uploader.nfs import copying, moves
from nfs_watcher_uploader.nfs.copying import Staged
from nfs_watcher_uploader.nfs.moves import Moved
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.work.completions import Completed, CompletedFiles
from nfs_watcher_uploader.work.context import Context, Progress, Seams
from nfs_watcher_uploader.work.staging import remove_staged

logger = logging.getLogger(__name__)

# What was read of a small file right after its claim, in the same thread call: its bytes, or
# what the read raised, raised again where the copy's errors are handled (the claim happened
# either way, and is accounted first). None: not read yet.
ReadAhead = Staged | Exception | None


class Transfer:
    """The steps of one file. A file marked completed is added to `completed` (for GC)."""

    def __init__(
        self,
        context: Context,
        storage: Storage,
        completed: CompletedFiles,
        seams: Seams,
        allow_links: bool = False,
    ) -> None:
        self.layout, self.sessions, self.nfs = context.layout, context.sessions, context.nfs
        self.telemetry, self.stats = context.telemetry, context.stats
        self.delivery = context.delivery
        self.replica = context.replica
        self.storage, self.completed = storage, completed
        self.allow_links = allow_links
        self._on_staged, self._claim = seams.on_staged, seams.claim
        self._move, self._copy = seams.move, seams.copy

    async def claim(
        self, item: WorkItem, session: Session, slot: Progress
    ) -> tuple[WorkItem, ReadAhead]:
        """Rename the file from incoming into `.processing`, and read a small file (one that
        is staged in memory) in the same thread call: one trip instead of two, the one cost
        of a small file that the share does not set. Raises Skip if it is not ours to take
        now, NotOurs if it is not a regular file."""
        folder = self.layout.session_folder(item.session_name)
        dst = self.layout.processing(item)
        # Unknown whether a failed rename happened (NFS can report a failure for a rename
        # that succeeded): it is retried, and `moves.move` then sees where the file is.
        links = self.allow_links
        ahead: ReadAhead = None
        with self.telemetry.step("claim"), nfs_errors("claim"):
            if item.seen is not None and 0 <= item.seen[0] <= self.storage.in_memory_max:
                moved, ahead = await self.nfs.call_watched(
                    lambda: self._claim_and_read(folder, item, dst, slot.touch),
                    lambda: slot.progress,
                )
            else:
                moved = await self.nfs.call_batched(
                    lambda: self._claim_if_valid(folder, item.rel, dst, item.seen, links)
                )
        if moved is Moved.TAKEN:
            if session.hold(item.rel):
                text = f"{item.rel}: waits in incoming until an earlier file of that name is done"
                session.notice(text)
                logger.info("%s", printable(text), extra=log_extra(item))
            raise Skip
        claimed = replace(item, claimed=True) if moved is Moved.DONE else None
        session.claimed(item, claimed)
        if claimed is None:
            # GONE: another claimant took it; CHANGED: not the file judged complete any more.
            logger.debug(
                "Not claiming %s: %s", printable(item.rel), moved.value, extra=log_extra(item)
            )
            raise Skip
        return claimed, ahead

    def _claim_and_read(
        self, folder: Path, item: WorkItem, dst: Path, touch: Callable[[], None]
    ) -> tuple[Moved, ReadAhead]:
        """In a thread: the claim, then (claimed) the read of a small file."""
        moved = self._claim_if_valid(folder, item.rel, dst, item.seen, self.allow_links)
        if moved is not Moved.DONE:
            return moved, None
        s = self.storage
        try:
            return moved, self._copy(
                dst,
                self.layout.staged(item),
                touch,
                s.block_size,
                s.single_put_size,
                s.in_memory_max,
                None,
            )
        except Exception as exc:  # the copy's error, for `_copy_out`, after the claim's
            return moved, exc

    def _claim_if_valid(
        self, folder: Path, rel: str, dst: Path, seen: tuple[int, int] | None, links: bool
    ) -> Moved:
        """In a thread: the claim, if this process may claim now. Validity is asked here, in
        the rename's own thread: nothing can pass between the check and the rename (a member
        whose validity ended claims nothing)."""
        if not self.replica.valid():
            return Moved.GONE
        return self._claim(folder, rel, dst, seen, links)

    async def process(
        self, item: WorkItem, slot: Progress, session: Session, ahead: ReadAhead = None
    ) -> None:
        """Stage (unless `ahead` was read with the claim), upload and complete one claimed
        file."""
        sent_bytes = None
        if item.committed is None:
            slot.enter("staging")
            staged = await self._stage(item, slot, ahead)
            if staged is None:  # an earlier attempt committed it and marked it completed
                self._count_uploaded(item, session, None)
                return
            if item.attempt == 0:
                session.staged(staged.read.size)
            slot.enter("uploading", staged.read.size)
            item, sent_bytes = await self._upload(item, staged, slot, session)
        slot.enter("committing")
        if not await self._record_and_complete(item):
            session.release(item)  # a peer took the file over: it counts it
            return
        self._count_uploaded(item, session, sent_bytes)

    async def _stage(self, item: WorkItem, slot: Progress, ahead: ReadAhead) -> Staged | None:
        early = None if ahead is not None else await self._early(item, slot)
        try:
            staged = await self._copy_out(item, slot, early, ahead)
            if staged is not None and early is not None:
                staged = replace(staged, sent_early=frozenset(early.sent_ids))
            return staged
        finally:
            if early is not None:
                await early.cancel()

    async def _early(self, item: WorkItem, slot: Progress) -> EarlyBlocks | None:
        """For a large file seen by the watcher: where its blocks go while it is read."""
        size = item.seen[0] if item.seen else 0
        if size < OVERLAP_MIN_BYTES or size <= self.storage.single_put_size:
            return None
        return await self.storage.early_blocks(
            self.layout.blob_name(item), item.overwrite, slot.touch
        )

    async def _copy_out(
        self, item: WorkItem, slot: Progress, early: EarlyBlocks | None, ahead: ReadAhead
    ) -> Staged | None:
        src, dst = self.layout.source(item), self.layout.staged(item)
        s = self.storage
        on_block = None if early is None else early.offer
        with self.telemetry.step("stage"):
            try:
                if isinstance(ahead, Exception):
                    raise ahead
                staged = ahead or await self.nfs.call_watched(
                    lambda: self._copy(
                        src,
                        dst,
                        slot.touch,
                        s.block_size,
                        s.single_put_size,
                        s.in_memory_max,
                        on_block,
                    ),
                    lambda: slot.progress,
                )
                if early is not None:
                    # Read: what is left is sending the blocks under way.
                    slot.enter("uploading", staged.read.size)
                    await early.settle()
            except FileNotFoundError as exc:
                if exc.filename is None or Path(exc.filename) != src:
                    raise RetryableError(f"staging copy failed: {exc}") from exc
                return await self._source_vanished(item, src, exc)
            except OSError as exc:
                await anyio.to_thread.run_sync(remove_staged, dst, item)
                raise RetryableError(f"staging copy failed: {exc}") from exc
        self.telemetry.set_file_size(staged.read.size)
        if self._on_staged is not None:
            staged = self._on_staged(dst, staged) or staged
        return staged

    async def _source_vanished(self, item: WorkItem, src: Path, exc: OSError) -> None:
        """The claimed file is gone: done by an earlier attempt, or lost to someone else."""
        if item.completed:  # committed by a previous run, and since removed: nothing to do
            return None
        done = self.layout.completed(item)
        with nfs_errors("looking for the claimed file"):
            completed = await self.nfs.call(lambda: moves.exists(done))
            still_there = completed or await self.nfs.call(lambda: moves.exists(src))
        if completed:
            return None
        if still_there:
            raise RetryableError(f"source not readable yet: {exc}") from exc
        if self.replica.shared:  # a peer took it over while this process was away
            logger.info("%s was taken over by a peer", printable(item.rel), extra=log_extra(item))
            raise Skip from exc
        raise PermanentError(f"claimed file vanished from {src.parent}") from exc

    async def _upload(
        self, item: WorkItem, staged: Staged, slot: Progress, session: Session
    ) -> tuple[WorkItem, int]:
        """Upload; returns the item with its blob and what was committed, and the bytes sent."""
        wanted = self.layout.blob_name(item)
        local = self.layout.staged(item)
        start = time.monotonic()
        attrs = {"blob.name": printable(wanted), "file.size": staged.read.size}
        # A file checked again in the completed tree went up as this very blob in a previous
        # run. A credential that may not read cannot compare them: the blob is replaced with the
        # file's bytes (the same, or the whole file after a late write), never copied under a
        # new name, which would leave the file named after a blob it did not go to.
        overwrite = item.overwrite or (item.completed and not self.storage.can_read)
        read = staged.read
        info = self.delivery.labels.for_file(item.session_name, wanted, read.md5, read.mtime_ns)
        # Sent again over its own blob: only over the version this file's commit left there.
        if_match = item.etag if overwrite else None
        with self.telemetry.step("upload", **attrs):
            sent = await self.storage.upload(
                local, wanted, staged, slot.touch, overwrite, log_extra(item), info, if_match
            )
        committed = (read.size, read.mtime_ns)
        item = replace(
            item,
            blob_name=sent.blob_name,
            committed=committed,
            overwrite=False,
            md5=read.md5,
            etag=sent.etag,
        )
        if sent.already:
            logger.info(
                "%s is already in storage as %s with the same bytes",
                printable(item.rel),
                printable(sent.blob_name),
                extra=log_extra(item),
            )
        else:
            self.telemetry.uploaded(staged.read.size, time.monotonic() - start)
        if sent.blob_name != wanted:
            await self._renamed(item, session, wanted, sent.compared)
        if staged.data is None:
            await anyio.to_thread.run_sync(remove_staged, local, item)
        return item, 0 if sent.already else staged.read.size

    async def _record_and_complete(self, item: WorkItem) -> bool:
        """Append the committed blob to the session's ledger (unless an earlier attempt did),
        then move the claimed file into the completed tree if it still has the size and mtime
        of the bytes committed (LateWrite if not), in one thread call. The line comes first: a
        crash after it leaves a line the manifest reads once (the last line of a blob wins),
        a crash before it a file that is uploaded, and recorded, again. False when a peer took
        the file over meanwhile (APP_COORDINATION=azure): the peer counts it, not this process."""
        done = self.layout.completed(item)
        ledger = self.delivery.ledger  # None: APP_MANIFEST=off
        ticket = None if ledger is None or item.recorded else ledger.queue(item)
        with self.telemetry.steps("record", "complete"):
            try:
                moved = await self.nfs.call_batched(
                    lambda: self._record_then_complete(item, done, ticket)
                )
            except OSError as exc:
                if ticket is not None and ticket.outcome is not True:
                    raise CompletionPending(item, f"cannot write the ledger: {exc}") from exc
                moved = exc
            if ticket is not None:
                item = replace(item, recorded=True)
            if isinstance(moved, OSError):
                raise CompletionPending(item, f"cannot mark completed: {moved}") from moved
        if moved is None:
            raise LateWrite(item)
        if moved is Moved.TAKEN:
            raise CompletionPending(item, "an earlier file of this name is not yet collected")
        assert item.committed is not None
        if moved is Moved.DONE:
            self.completed.add(done, Completed(item, *item.committed))
        elif self.replica.shared and not item.completed:
            logger.info(
                "%s was taken over by a peer before it was marked completed",
                printable(item.rel),
                extra=log_extra(item),
            )
            return False
        else:  # neither side is there: GC already took it
            logger.info("%s already collected", printable(item.rel), extra=log_extra(item))
        return True

    def _record_then_complete(
        self, item: WorkItem, done: Path, ticket: Ticket | None
    ) -> Moved | OSError | None:
        """In a thread: the ledger line written (raises if it could not be: nothing else is
        done then), then the move into the completed tree (None: the file changed; an OSError:
        it could not be moved, the line being written)."""
        if ticket is not None and self.delivery.ledger is not None:
            self.delivery.ledger.flush(ticket)
        try:
            return self._mark_completed(item, done)
        except OSError as exc:
            return exc

    def _mark_completed(self, item: WorkItem, done: Path) -> Moved | None:
        """In a thread: move the file to `done` if it still has the size and mtime committed."""
        assert item.committed is not None
        src = self.layout.source(item)
        try:
            if not copying.unchanged(src, *item.committed):
                return None
        except FileNotFoundError:
            pass  # already moved by an attempt that reported failure: `move` sees it
        if item.completed:  # checked where it lies
            return Moved.DONE
        return self._move(src, done, item.committed)

    def _count_uploaded(self, item: WorkItem, session: Session, size: int | None) -> None:
        if item.completed and not size:  # a previous run's upload, found intact: not counted
            session.release(item)
            return
        session.count_uploaded(item, size)
        self.stats.count_uploaded(size)
        blob_name = printable(self.layout.blob_name(item))
        logger.info(
            "Uploaded %s",
            blob_name,
            extra={**log_extra(item), "blob_name": blob_name, "size_bytes": size},
        )

    async def _renamed(self, item: WorkItem, session: Session, wanted: str, compared: bool) -> None:
        self.telemetry.renamed()
        blob_name = self.layout.blob_name(item)
        held = "holds other bytes" if compared else "is taken and the credential may not read it"
        text = f"{item.rel}: uploaded as {blob_name}; {wanted} {held} (kept)"
        session.count_renamed(text)
        logger.warning("Name conflict: %s", printable(text), extra=log_extra(item))
        md5 = (item.md5 or b"").hex()
        data = {
            "session": item.session_name,
            "date_prefix": item.date_prefix,
            "path": item.rel,
            "wanted": wanted,
            "blob_name": blob_name,
            "md5": md5,
        }
        # The same id when this blob is found again after a crash: a receiver sees one event.
        await self.delivery.webhooks.emit("file.conflict_renamed", data, event_id(blob_name, md5))

    # --- what is not a plain success -------------------------------------------------------

    async def put_back(self, item: WorkItem, session: Session, what: str) -> None:
        """Not a regular file of ours: leave it (or put it back) in incoming, and say so."""
        text = f"{item.rel}: {what}; left in incoming, not uploaded"
        if item.claimed:
            src, back = self.layout.processing(item), self.layout.incoming(item)
            try:
                returned = await self.nfs.call(lambda: moves.return_to(src, back))
            except (OSError, NotOurs) as exc:
                returned, text = False, f"{text} (could not put it back: {exc})"
            if not returned:
                text = f"{item.rel}: {what}; left in {src.parent}, not uploaded"
        session.ignore(item, what, text)
        logger.warning("Not a regular file: %s", printable(text), extra=log_extra(item))

    async def late_write(self, item: WorkItem) -> WorkItem:
        """The file changed after its bytes were read: what went up is not the whole file.
        Say so, and return the item that sends it again, whole, over the same blob. A session
        that had ended drains again (its manifest and event are out of date): it ends anew,
        and its new end is reported as an update (`session.updated`)."""
        self.stats.late_writes += 1
        self.telemetry.late_write()
        blob_name = self.layout.blob_name(item)
        text = (
            f"{item.rel} was written to after it was claimed; uploading the whole file again "
            f"over {blob_name} (APP_MIN_FILE_AGE_S is shorter than the writer's pauses)"
        )
        session = self.sessions.for_item(item)
        session.count_late_write(text)
        logger.error("LATE WRITE: %s", printable(text), extra=log_extra(item))
        await self.sessions.reopen(session, "a file it had uploaded was written to", update=True)
        return replace(
            item, committed=None, overwrite=True, blob_name=blob_name, md5=None, recorded=False
        )
