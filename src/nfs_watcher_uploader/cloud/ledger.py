"""The ledger: one JSON line per committed blob, per session, on NFS, for the manifest; and one
per parked file an operator dismissed (`{"dismissed": {...}}`), which the manifest lists too.

A file's line (with the blob's ETag) is appended and fsynced after its blob is committed and
before the file is marked completed. So after any crash, every committed file either has its
line or is uploaded again (found already there, same bytes) and gets it then; lines of one blob
name are read as one, the last winning. Completions that arrive together share one write and
one fsync: the first to take the lock writes every line waiting (small files are the hot path).
A line torn by a crash is ended before anything is appended after it, and skipped when read.

With other replicas (APP_COORDINATION=azure) each member appends to its own ledger, in its own
tree (O_APPEND is atomic within one NFS client only), and a session's ledger is the union of
every member's (`sources`): lines of one blob from several ledgers that disagree (the file was
sent again, whole, by another member after a late write) are all returned (`Record.conflicts`)
for the caller to ask storage which one the blob holds.
"""

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from nfs_watcher_uploader.blob.blobinfo import iso_utc, iso_utc_ns
from nfs_watcher_uploader.cloud.manifest import Dismissed, FileEntry
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.opening import read_regular
from nfs_watcher_uploader.nfs.runner import Nfs

logger = logging.getLogger(__name__)

# Read too: a ledger is checked for a torn last line before the first append to it.
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


class _DismissedLine(BaseModel):
    dismissed: Dismissed


@dataclass(frozen=True, slots=True)
class Record:
    """What a session's ledger holds: its committed blobs and its dismissed parked files;
    and, of blobs whose lines in several ledgers disagree, every version (see the docstring)."""

    files: list[FileEntry]
    dismissed: list[Dismissed]
    conflicts: dict[str, list[FileEntry]] = field(default_factory=dict[str, list[FileEntry]])


# (date, session) -> every ledger file of the session (see the module docstring), each as a
# folder of ours and the path below it, which is entered without following any link.
Sources = Callable[[str, str], list[tuple[Path, list[str]]]]
# A ledger larger than this is not one of ours (a line is ~300 bytes: ~3 million files).
LEDGER_MAX = 1024 * 1024 * 1024


class _Batch:
    """Lines waiting for one write, and how that write went (None: not written yet)."""

    def __init__(self) -> None:
        self.lines: dict[Path, list[bytes]] = {}
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
        self._open: _Batch | None = None
        self._lock = asyncio.Lock()
        # Ledgers known to end with a whole line (touched only by the one writing thread).
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
        batch = self._open = self._open or _Batch()
        batch.lines.setdefault(path, []).append(entry.model_dump_json().encode() + b"\n")
        await asyncio.sleep(0)  # let the completions of this same turn join the batch
        async with self._lock:
            if batch.outcome is None:
                self._open = None  # later lines go into the next batch
                try:
                    await self.nfs.call(lambda: self._append(batch.lines))
                except OSError as exc:
                    batch.outcome = exc
                except BaseException:
                    batch.outcome = OSError(errno.EINTR, "ledger write interrupted")
                    raise
                else:
                    batch.outcome = True
                    self.writes += 1
                    self.lines += sum(len(lines) for lines in batch.lines.values())
        if isinstance(batch.outcome, OSError):
            raise OSError(batch.outcome.errno, f"ledger write failed: {batch.outcome}")

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
        path = self.layout.ledger(date_prefix, session_name)
        async with self._lock:
            await self.nfs.call(lambda: self._append({path: [line]}))
            self.writes += 1

    def read(self, date_prefix: str, session_name: str) -> list[FileEntry]:
        """The session's committed blobs, one entry per blob name (the last line wins), in
        name order. Blocking: run it through `Nfs.call`."""
        return self.read_all(date_prefix, session_name).files

    def read_all(self, date_prefix: str, session_name: str) -> Record:
        """The committed blobs (as `read`) and the dismissed parked files, each once (a
        dismissal recorded twice around a crash is one), in name order, from every ledger of
        the session (`sources`). Blocking."""
        entries: dict[str, FileEntry] = {}
        versions: dict[str, list[FileEntry]] = {}
        dismissed: dict[tuple[str, str | None], Dismissed] = {}
        for root, parts in self.sources(date_prefix, session_name):
            mine = self._read_one(root, parts, dismissed)
            for name, entry in mine.items():
                seen = entries.get(name)
                if seen is not None and (seen.md5, seen.size) != (entry.md5, entry.size):
                    versions.setdefault(name, [seen]).append(entry)
                entries[name] = entry
        return Record(
            [entries[name] for name in sorted(entries)],
            sorted(dismissed.values(), key=lambda d: (d.parked_as, d.dismissed_at)),
            versions,
        )

    def _read_one(
        self, root: Path, parts: list[str], dismissed: dict[tuple[str, str | None], Dismissed]
    ) -> dict[str, FileEntry]:
        """One ledger's blobs (the last line of each wins); its dismissals into `dismissed`."""
        path = root.joinpath(*parts)
        raw = read_regular(root, parts, LEDGER_MAX)
        if raw is None:
            return {}
        entries: dict[str, FileEntry] = {}
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
        return entries


def _ends_whole(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
