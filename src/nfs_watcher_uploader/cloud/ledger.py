"""The ledger: one JSON line per committed blob, per session, on NFS, for the manifest; and one
per parked file an operator dismissed (`{"dismissed": {...}}`), which the manifest lists too.

A file's line is appended and fsynced after its blob is committed and before the file is marked
completed. So after any crash, every committed file either has its line or is uploaded again
(found already there, same bytes) and gets it then; lines of one blob name are read as one, the
last winning. Lines are `queue`d on the event loop and written by `flush` in a thread (the
completion's own, see work/transfer.py): the first flush writes every line waiting, with one
fsync per ledger, and each line's caller gets the outcome of the write that took it (small
files are the hot path). A line torn by a crash is ended before anything is appended after it,
and skipped when read.
"""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from nfs_watcher_uploader.blob.blobinfo import iso_utc, iso_utc_ns
from nfs_watcher_uploader.cloud.manifest import Dismissed, FileEntry
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs

logger = logging.getLogger(__name__)

# Read too: a ledger is checked for a torn last line before the first append to it.
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


class _DismissedLine(BaseModel):
    dismissed: Dismissed


class Record(NamedTuple):
    """What a session's ledger holds: its committed blobs and its dismissed parked files."""

    files: list[FileEntry]
    dismissed: list[Dismissed]


class Ticket:
    """A queued line: how its write went (None: not written yet; True; or the write's error)."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome: OSError | bool | None = None


class Ledger:
    def __init__(self, layout: Layout, nfs: Nfs, clock: Callable[[], float] = time.time) -> None:
        self.layout, self.nfs, self._clock = layout, nfs, clock
        # Lines queued and not yet taken by a write, and their tickets (under `_queue_lock`).
        self._queued: dict[Path, list[bytes]] = {}
        self._tickets: list[Ticket] = []
        self._queue_lock = threading.Lock()
        # One write at a time; `_clean` is touched by the writing thread only.
        self._write_lock = threading.Lock()
        # Ledgers known to end with a whole line.
        self._clean: set[Path] = set()
        self._paths: dict[tuple[str, str], Path] = {}
        self.writes = 0
        self.lines = 0

    def __repr__(self) -> str:
        return f"Ledger(writes={self.writes} lines={self.lines})"

    async def record(self, item: WorkItem) -> None:
        """Append the line of a committed file (`item.md5` and `item.committed` are set);
        return once it is on disk. Raises OSError when NFS failed."""
        ticket = self.queue(item)
        await self.nfs.call_batched(lambda: self.flush(ticket))

    def queue(self, item: WorkItem) -> Ticket:
        """On the loop: the line of a committed file (`item.md5` and `item.committed` are
        set), to be written by the next `flush`."""
        assert item.committed is not None and item.md5 is not None
        size, mtime_ns = item.committed
        # Built from values of known types: no validation on the hot path of small files.
        entry = FileEntry.model_construct(
            blob=self.layout.blob_name(item),
            path=item.rel,
            size=size,
            md5=item.md5.hex(),
            source_mtime=iso_utc_ns(mtime_ns),
            uploaded_at=iso_utc(self._clock()),
        )
        key = (item.date_prefix, item.session_name)
        path = self._paths.get(key) or self._paths.setdefault(key, self.layout.ledger(*key))
        return self._queue_line(path, entry.model_dump_json().encode() + b"\n")

    def _queue_line(self, path: Path, line: bytes) -> Ticket:
        ticket = Ticket()
        with self._queue_lock:
            self._queued.setdefault(path, []).append(line)
            self._tickets.append(ticket)
        return ticket

    def flush(self, ticket: Ticket) -> None:
        """In a thread: make sure the line of `ticket` is on disk, writing every line queued
        (one write and one fsync per ledger). Raises OSError when its write failed."""
        with self._write_lock:
            if ticket.outcome is None:
                with self._queue_lock:
                    queued, tickets = self._queued, self._tickets
                    self._queued, self._tickets = {}, []
                outcome: OSError | bool = OSError(errno.EINTR, "ledger write interrupted")
                try:
                    self._append(queued)
                    outcome = True
                except OSError as exc:
                    outcome = exc
                finally:
                    for taken in tickets:
                        taken.outcome = outcome
                if outcome is True:
                    self.writes += 1
                    self.lines += sum(len(lines) for lines in queued.values())
        if isinstance(ticket.outcome, OSError):
            raise OSError(ticket.outcome.errno, f"ledger write failed: {ticket.outcome}")

    def _append(self, batches: dict[Path, list[bytes]]) -> None:
        for path, lines in batches.items():
            known_whole = path in self._clean
            self._clean.discard(path)  # until this write is through
            try:
                fd = os.open(path, _APPEND_FLAGS)
                created = False
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, _APPEND_FLAGS | os.O_CREAT, 0o644)
                created = True
            try:
                data = b"".join(lines)
                if not created and not known_whole and not _ends_whole(fd):
                    data = b"\n" + data  # a crash tore the last line: end it first
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(path.parent)
            self._clean.add(path)

    async def record_dismissed(self, date_prefix: str, session_name: str, entry: Dismissed) -> None:
        """Append a dismissed parked file's line, fsynced. Raises OSError when NFS failed."""
        line = _DismissedLine(dismissed=entry).model_dump_json().encode() + b"\n"
        ticket = self._queue_line(self.layout.ledger(date_prefix, session_name), line)
        await self.nfs.call_batched(lambda: self.flush(ticket))

    def read(self, date_prefix: str, session_name: str) -> list[FileEntry]:
        """The session's committed blobs, one entry per blob name (the last line wins), in
        name order. Blocking: run it through `Nfs.call`."""
        return self.read_all(date_prefix, session_name).files

    def read_all(self, date_prefix: str, session_name: str) -> Record:
        """The committed blobs (as `read`) and the dismissed parked files, each once (a
        dismissal recorded twice around a crash is one), in name order. Blocking."""
        path = self.layout.ledger(date_prefix, session_name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Record([], [])
        entries: dict[str, FileEntry] = {}
        dismissed: dict[tuple[str, str | None], Dismissed] = {}
        torn = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                if line.startswith(b'{"dismissed":'):
                    gone = _DismissedLine.model_validate_json(line).dismissed
                    dismissed[(gone.parked_as, gone.parked_at)] = gone
                    continue
                entry = FileEntry.model_validate_json(line)
            except ValueError:
                torn += 1
                continue
            entries[entry.blob] = entry
        if torn:
            logger.warning("%s: skipped %d unreadable lines (torn by a crash)", path, torn)
        return Record(
            [entries[name] for name in sorted(entries)],
            sorted(dismissed.values(), key=lambda d: (d.parked_as, d.dismissed_at)),
        )


def _ends_whole(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
