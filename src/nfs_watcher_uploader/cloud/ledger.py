"""The ledger: one JSON line per committed blob, per session, on NFS, for the manifest; and one
per parked file an operator dismissed (`{"dismissed": {...}}`), which the manifest lists too.

A file's line is appended and fsynced after its blob is committed and before the file is marked
completed. So after any crash, every committed file either has its line or is uploaded again
(found already there, same bytes) and gets it then; lines of one blob name are read as one, the
last winning. Lines are `queue`d on the event loop and written by `flush` in a thread (the
completion's own, see work/transfer.py): the first flush writes every line waiting, with one
fsync per ledger, and each line's caller gets the outcome of the write that took it (small
files are the hot path). A line torn by a crash is ended before anything is appended after it,
and skipped when read. After a session's manifest is written, a line
`{"manifest": {"generation": N}}` says which end it showed (`reports`).

A ledger is read back like any file on the share (`nfs.reading`), line by line: a line that is
not one of ours (torn, too long, too deep, a blob outside its session or a name that cannot be
a blob) is skipped and counted; a ledger that is not a regular file of at most LEDGER_MAX bytes
is set aside (under `_set_aside/`) with an error line, and the session's record says so
(`Record.problem`: its manifest cannot say it is complete). Appends never follow a link either.

Each line of a committed file carries the blob's ETag. With other replicas
(APP_COORDINATION=azure) each member appends to its own ledger, in its own tree (O_APPEND is
atomic within one NFS client only), and a session's ledger is the union of every member's
(`sources`), each read as above: lines of one blob from several ledgers that disagree (the file
was sent again, whole, by another member after a late write) are all returned
(`Record.conflicts`) for the caller to ask storage which one the blob holds.
"""

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from nfs_watcher_uploader.blob.blobinfo import iso_utc, iso_utc_ns
from nfs_watcher_uploader.cloud.manifest import Dismissed, FileEntry
from nfs_watcher_uploader.constants import LEDGER_LINE_MAX, LEDGER_MAX
from nfs_watcher_uploader.items import WorkItem, blob_name_problem, path_problem, printable
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.reading import (
    Generation,
    Unusable,
    parse_json,
    read_lines,
    set_aside,
    set_aside_or_leave,
)
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.state import write_all

logger = logging.getLogger(__name__)

# Times something that is not a ledger is set aside before an append gives up (it keeps coming).
_ATTEMPTS = 5
# Read too: a ledger is checked for a torn last line before the first append to it. Never
# through a link; a FIFO put in its place cannot block the open (and is then set aside).
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _DismissedLine(BaseModel):
    dismissed: Dismissed


class _Written(BaseModel):
    generation: Generation


class _ManifestLine(BaseModel):
    manifest: _Written


@dataclass(frozen=True, slots=True)
class Record:
    """What a session's ledger holds: its committed blobs and its dismissed parked files; the
    newest end its manifest was written for (0: none); why it could not be read whole; and, of
    blobs whose lines in several ledgers disagree, every version (see the module docstring)."""

    files: list[FileEntry]
    dismissed: list[Dismissed]
    written: int = 0
    problem: str | None = None
    conflicts: dict[str, list[FileEntry]] = field(default_factory=dict[str, list[FileEntry]])


# (date, session) -> every ledger file of the session (see the module docstring), each as a
# folder of ours and the path below it, which is entered without following any link.
Sources = Callable[[str, str], list[tuple[Path, list[str]]]]


class Ticket:
    """A queued line: how its write went (None: not written yet; True; or the write's error)."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome: OSError | bool | None = None


class Ledger:
    def __init__(
        self,
        layout: Layout,
        nfs: Nfs,
        clock: Callable[[], float] = time.time,
        sources: Sources | None = None,
    ) -> None:
        self.layout, self.nfs, self._clock = layout, nfs, clock
        self.sources: Sources = sources or self._own
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

    def _own(self, date_prefix: str, session_name: str) -> list[tuple[Path, list[str]]]:
        path = self.layout.ledger(date_prefix, session_name)
        return [
            (self.layout.processing_root, list(path.relative_to(self.layout.processing_root).parts))
        ]

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
            etag=item.etag,
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
            folder = trees.make_folder(self.layout.processing_root, *self._folders(path))
            try:
                fd, created = self._open_for_append(path, folder)
                if created:
                    os.fsync(folder)
            finally:
                os.close(folder)
            try:
                data = b"".join(lines)
                if not created and not known_whole and not _ends_whole(fd):
                    data = b"\n" + data  # a crash tore the last line: end it first
                write_all(fd, data)
            finally:
                os.close(fd)
            self._clean.add(path)

    def _folders(self, path: Path) -> tuple[str, ...]:
        """The folders of the ledger at `path` below the processing root."""
        return path.parent.relative_to(self.layout.processing_root).parts

    def _open_for_append(self, path: Path, folder: int) -> tuple[int, bool]:
        """A descriptor to append to the ledger at `path` (in the folder `folder`), and whether
        it was created. Whatever else stands there (a link, a FIFO, a folder) is set aside."""
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(path.name, _APPEND_FLAGS, dir_fd=folder)
            except FileNotFoundError:
                flags = _APPEND_FLAGS | os.O_CREAT | os.O_EXCL
                try:
                    return os.open(path.name, flags, 0o644, dir_fd=folder), True
                except FileExistsError:
                    continue  # something came meanwhile: look at it
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EISDIR):
                    raise
                self._set_aside(path, "a symbolic link or a folder, not a regular file", folder)
                continue
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd, False
            os.close(fd)
            self._set_aside(path, "not a regular file", folder)
        raise OSError(errno.EAGAIN, f"{path} keeps being replaced by something else")

    def _set_aside(self, path: Path, why: str, folder: int) -> Path:
        aside = set_aside(path, "unusable", root=self.layout.processing_root, dir_fd=folder)
        logger.error("Ledger %s unusable (%s); set aside as %s", path, why, aside)
        return aside

    async def record_written(self, date_prefix: str, session_name: str, generation: int) -> None:
        """Note that the session's manifest now shows its end of `generation`, fsynced (read
        back by `read_all`: no older end is written over it). Raises OSError."""
        line = _ManifestLine(manifest=_Written(generation=generation)).model_dump_json()
        ticket = self._queue_line(
            self.layout.ledger(date_prefix, session_name), line.encode() + b"\n"
        )
        await self.nfs.call_batched(lambda: self.flush(ticket))

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
        dismissal recorded twice around a crash is one), in name order; the newest end written;
        from every ledger of the session (`sources`). Blocking."""
        entries: dict[str, FileEntry] = {}
        versions: dict[str, list[FileEntry]] = {}
        dismissed: dict[tuple[str, str | None], Dismissed] = {}
        written, problems = 0, list[str]()
        for root, parts in self.sources(date_prefix, session_name):
            one = _read_one(root, parts, f"{date_prefix}/{session_name}/")
            for entry in one.files:
                seen = entries.get(entry.blob)
                if seen is not None and (seen.md5, seen.size) != (entry.md5, entry.size):
                    versions.setdefault(entry.blob, [seen]).append(entry)
                entries[entry.blob] = entry
            dismissed.update({(d.parked_as, d.parked_at): d for d in one.dismissed})
            written = max(written, one.written)
            if one.problem is not None:
                problems.append(one.problem)
        return Record(
            [entries[name] for name in sorted(entries)],
            sorted(dismissed.values(), key=lambda d: (d.parked_as, d.dismissed_at)),
            written,
            "; ".join(problems) or None,
            versions,
        )


def _read_one(root: Path, parts: list[str], prefix: str) -> Record:
    """One ledger file, `parts` below the folder `root` (see `Ledger.read_all`)."""
    path = root.joinpath(*parts)
    folder = trees.open_folder(root, *parts[:-1])
    if folder is None:
        return Record([], [])
    try:
        lines = read_lines(parts[-1], LEDGER_MAX, LEDGER_LINE_MAX, dir_fd=folder)
        if lines is None:
            return Record([], [])
        return _parse(lines, prefix, path)
    except Unusable as exc:
        done = set_aside_or_leave(path, root, folder)
        logger.error("Ledger %s unusable (%s); %s", path, exc, done)
        return Record([], [], problem=f"its ledger was unusable ({exc}); {done}")
    finally:
        os.close(folder)


def _parse(lines: Iterator[bytes | None], prefix: str, path: Path) -> Record:
    """A ledger's lines; those that are not ours are skipped and counted."""
    entries: dict[str, FileEntry] = {}
    dismissed: dict[tuple[str, str | None], Dismissed] = {}
    written = torn = 0
    for line in lines:
        if line is not None and not line.strip():
            continue
        try:
            if line is None:
                raise Unusable("a line too long")
            if line.startswith(b'{"dismissed":'):
                gone = parse_json(line, _DismissedLine).dismissed
                dismissed[(gone.parked_as, gone.parked_at)] = gone
            elif line.startswith(b'{"manifest":'):
                generation = parse_json(line, _ManifestLine).manifest.generation
                written = max(written, generation)
            else:
                entry = parse_json(line, FileEntry)
                _check_entry(entry, prefix)
                entries[entry.blob] = entry
        except Unusable:
            torn += 1
    if torn:
        logger.warning(
            "%s: skipped %d lines that are not the ledger's (torn by a crash, or written by "
            "someone else)",
            path,
            torn,
        )
    return Record(
        [entries[name] for name in sorted(entries)],
        sorted(dismissed.values(), key=lambda d: (d.parked_as, d.dismissed_at)),
        written,
    )


def _check_entry(entry: FileEntry, prefix: str) -> None:
    """A line that means what ours mean: a blob of its session, that can be a blob."""
    if not entry.blob.startswith(prefix):
        raise Unusable(f"blob {printable(entry.blob)!r} is not in {prefix}")
    problem = blob_name_problem(entry.blob) or path_problem(entry.path)
    if problem is not None or entry.size < 0:
        raise Unusable(f"blob {printable(entry.blob)!r}: {problem or 'a negative size'}")


def _ends_whole(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"
