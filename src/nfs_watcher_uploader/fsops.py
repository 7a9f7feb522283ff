"""Blocking filesystem steps, and `Nfs`, which runs them in threads with deadlines.

Every call that touches NFS goes through `Nfs` so that a hung mount (a `hard` mount whose server
went away blocks every syscall) never blocks the event loop: the call is abandoned after
`timeout` seconds and raises TimeoutError (an OSError), which callers treat as transient.

Three rules hold for every step here, whatever an attacker or an unlucky recorder puts in the
share:
- Nothing is followed: a session folder, a subfolder or a file that is a symbolic link is never
  entered, read or moved; files are opened with O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block the
  open) and checked to be regular on the open descriptor. What is not a regular file raises
  `NotOurs` and is left where it is.
- Nothing is replaced: `move` never renames over an existing file (it answers TAKEN).
- An ambiguous answer from NFS is judged by looking, by inode, never guessed.
"""

import asyncio
import enum
import errno
import fcntl
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from nfs_watcher_uploader.constants import (
    COPY_CHUNK,
    DATE_DIR_RE,
    MAX_ABANDONED_THREADS,
    MAX_DEPTH,
    META_THREADS,
)
from nfs_watcher_uploader.errors import NotOurs

# rel path -> (size, mtime_ns): what the watcher compares between two scans.
ScanMap = dict[str, tuple[int, int]]
# Stands for "present, but its attributes could not be read this time" (a stale handle): the
# file is neither ready nor gone.
UNKNOWN = (-1, -1)

# Errors that say "the file (or a handle on it) is gone". On NFS, ESTALE may also be a passing
# fault, so callers look again before drawing a conclusion.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC

# Every move into a destination of ours checks "is the destination free?" and renames under this
# lock, so that no two of our own threads can both find it free. (One service instance writes a
# processing root: the Deployment's Recreate strategy.) A plain check-then-rename is used rather
# than link()+unlink(): with fs.protected_hardlinks a non-owner cannot link a recorder's file.
_MOVE_LOCK = threading.Lock()


class Moved(enum.Enum):
    DONE = "done"  # the file is now at the destination
    GONE = "gone"  # the source is gone and the destination does not hold it: someone else's
    TAKEN = "taken"  # the destination holds another file: nothing was moved
    CHANGED = "changed"  # the source is not the file that was judged complete: not moved


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


# --- scanning ------------------------------------------------------------------------------


class Wanted(Protocol):
    """Which files a scan takes (filters.FileFilter)."""

    def folder_excluded(self, name: str) -> bool: ...

    def wanted(self, rel: str, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Extensions:
    """Files with one of `extensions` (all files when empty): the older way to say `Wanted`."""

    extensions: frozenset[str]

    def folder_excluded(self, name: str) -> bool:
        return False

    def wanted(self, rel: str, name: str) -> bool:
        return not self.extensions or os.path.splitext(name)[1].lower() in self.extensions


@dataclass
class Scan:
    """What one pass over a session folder found."""

    files: ScanMap = field(default_factory=ScanMap)
    # Files the filter excludes (APP_INCLUDE, APP_EXCLUDE, APP_FILE_EXTENSIONS): left in
    # incoming, counted, never claimed.
    excluded: list[str] = field(default_factory=list[str])
    # rel path -> what it is ("a FIFO, not a regular file"...): never ours, never touched.
    ignored: dict[str, str] = field(default_factory=dict[str, str])
    # Folders deeper than MAX_DEPTH: not uploaded, so the session cannot be drained.
    too_deep: list[str] = field(default_factory=list[str])
    # Folders and files this process may not read (permissions): they block drained too.
    unreadable: list[str] = field(default_factory=list[str])
    # Regular files with more than one hard link: rel -> the link count (see `claim`).
    linked: dict[str, int] = field(default_factory=dict[str, int])
    # Set when the session folder itself is not a real folder (a symlink, a file).
    problem: str | None = None


def scan_session(
    folder: Path,
    wanted: Wanted | frozenset[str],
    known: ScanMap | None = None,
    young_ns: int = 0,
    max_depth: int = MAX_DEPTH,
) -> Scan:
    """Regular files below `folder`, up to `max_depth` levels, keyed by their path relative to
    it ('cam2/rec1.bin'), that `wanted` takes (the others are listed as excluded, without a
    stat; a frozenset is a set of extensions). Symbolic links are reported, never followed. A
    name in `known` was taken before, so the filter is not asked again.

    A name in `known` whose mtime is after `young_ns` keeps its known (size, mtime) without a
    stat: it is too young to be claimed now, and a write would only make it younger. (The stat
    is most of a scan's cost: 10,000 files are 10,000 syscalls.)
    """
    if isinstance(wanted, frozenset):
        wanted = Extensions(wanted)
    scan = Scan()
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except FileNotFoundError:
        return scan
    except PermissionError:
        scan.problem = f"{folder} cannot be read by the service (permissions)"
        return scan
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            scan.problem = f"{folder} is not a real folder (a symbolic link or a file)"
            return scan
        raise
    try:
        _Walk(scan, wanted, known or {}, young_ns, max_depth).folder(fd, "", 1)
    finally:
        os.close(fd)
    return scan


@dataclass
class _Walk:
    """One scan's walk down a session folder, by descriptor."""

    scan: Scan
    wanted: Wanted
    known: ScanMap
    young_ns: int
    max_depth: int

    def folder(self, fd: int, prefix: str, depth: int, excluded: bool = False) -> None:
        """Scan one folder. Below an excluded folder every file is listed as excluded, unread."""
        with os.scandir(fd) as it:
            entries = list(it)
        known, young_ns, files = self.known, self.young_ns, self.scan.files
        for entry in entries:
            rel = prefix + entry.name
            if not entry.is_dir(follow_symlinks=False):
                # Most of a big folder, every poll: a known file too young to take (`entry`).
                seen = known.get(rel)
                if seen is not None and seen[1] > young_ns and not excluded:
                    files[rel] = seen
                else:
                    self.entry(entry, rel, excluded)
            elif depth >= self.max_depth:
                if not excluded:
                    self.scan.too_deep.append(rel)
            else:
                below = excluded or self.wanted.folder_excluded(entry.name)
                self.subfolder(fd, entry.name, rel, depth, below)

    def subfolder(self, fd: int, name: str, rel: str, depth: int, excluded: bool) -> None:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                self.folder(child, rel + "/", depth + 1, excluded)
            finally:
                os.close(child)
        except FileNotFoundError:
            pass
        except PermissionError:  # one folder we may not read must not stop the others
            if not excluded:
                self.scan.unreadable.append(rel)

    def entry(self, entry: os.DirEntry[str], rel: str, excluded: bool) -> None:
        scan = self.scan
        seen = self.known.get(rel)
        if excluded or (seen is None and not self.wanted.wanted(rel, entry.name)):
            scan.excluded.append(rel)
            return
        if seen is not None and seen[1] > self.young_ns:
            scan.files[rel] = seen
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        except PermissionError:
            scan.unreadable.append(rel)
            return
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            scan.files[rel] = UNKNOWN
            return
        if not stat.S_ISREG(st.st_mode):
            scan.ignored[rel] = f"a {kind_of(st.st_mode)}, not a regular file"
            return
        scan.files[rel] = (st.st_size, st.st_mtime_ns)
        if st.st_nlink > 1:
            scan.linked[rel] = st.st_nlink


def kind_of(mode: int) -> str:
    """What a non-regular entry is, in words for a log line."""
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "special file"


# --- moving --------------------------------------------------------------------------------


def exists(path: Path) -> bool:
    """Like os.path.lexists, but only a real ENOENT means "absent": ESTALE, EIO or a timeout
    raise, because on NFS they say nothing about whether the file is there."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _lstat_retrying(
    path: Path | str, dir_fd: int | None = None, attempts: int = 5
) -> os.stat_result | None:
    """lstat, None for ENOENT; a stale handle is looked at again."""
    for attempt in range(attempts):
        try:
            return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _same(a: os.stat_result, b: os.stat_result | None) -> bool:
    """The same file: by inode (NFS file ids are stable), or where a filesystem renumbers
    (FUSE without use_ino), by type, size and mtime."""
    if b is None:
        return False
    if (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev):
        return True
    return (a.st_mode, a.st_size, a.st_mtime_ns) == (b.st_mode, b.st_size, b.st_mtime_ns)


def move(
    src: Path | str,
    dst: Path,
    expect: tuple[int, int] | None = None,
    *,
    src_dir_fd: int | None = None,
) -> Moved:
    """Rename `src` to `dst`, never over an existing file; create `dst`'s folder if missing.

    DONE: the file is at `dst`. GONE: `src` is gone and `dst` does not hold it (another claimant
    took it, or it was deleted). TAKEN: `dst` holds another file; nothing moved.

    An ENOENT or ESTALE from rename is ambiguous on NFS: the source may be gone, the destination
    folder missing (GC pruned it), or a retransmitted rename that already succeeded may report
    it. So the outcome is judged by looking at both sides, by inode. A move given up at its
    deadline may still happen later, in its thread: when it is tried again, a source that is
    gone and a destination with the (size, mtime) `expect`ed mean it did (DONE). All of it runs
    under one lock, so a late move and its retry never interleave.
    """
    with _MOVE_LOCK:
        for _ in range(5):
            before = _lstat_retrying(src, src_dir_fd)
            if before is None:
                return Moved.DONE if _holds(_lstat_retrying(dst), expect) else Moved.GONE
            if _lstat_retrying(dst) is not None:
                return Moved.TAKEN
            try:
                os.rename(src, dst, src_dir_fd=src_dir_fd)
                return Moved.DONE
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
                    return Moved.TAKEN  # a file where a folder of the path should be, or so
                if exc.errno not in GONE_ERRNOS:
                    raise
            if not _same(before, _lstat_retrying(src, src_dir_fd)):
                return Moved.DONE if _same(before, _lstat_retrying(dst)) else Moved.GONE
            # The source is still there: the destination folder is missing, or a handle went
            # stale. Make sure the folder exists and try again.
            try:
                os.makedirs(dst.parent, exist_ok=True)
            except FileExistsError:
                return Moved.TAKEN  # a file stands where a folder of the path should be
    raise OSError(errno.ESTALE, f"rename kept failing: {src} -> {dst}")


def _holds(st: os.stat_result | None, expect: tuple[int, int] | None) -> bool:
    return st is not None and expect is not None and (st.st_size, st.st_mtime_ns) == expect


def open_dir(folder: Path, parts: list[str]) -> int:
    """A descriptor on `folder`/`parts`, entering no symbolic link on the way (NotOurs if one
    is there; FileNotFoundError if a part is missing)."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotOurs(f"{folder} is not a real folder") from None
        raise
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotOurs(f"folder {part!r} is a symbolic link or a file") from None
            raise
        os.close(fd)
        fd = child
    return fd


def claim(
    folder: Path,
    rel: str,
    dst: Path,
    expect: tuple[int, int] | None = None,
    allow_links: bool = False,
) -> Moved:
    """Move the regular file `folder`/`rel` to `dst`, never through a symbolic link, and only
    if it is the file the scan judged complete: `expect`ed (size, mtime); else CHANGED.

    The folders are entered by descriptor, so a session folder or subfolder swapped for a link
    is never followed. A source that is not a regular file raises NotOurs and stays, and so
    does a file with more than one hard link unless `allow_links`: on NFS anyone may link any
    file of the export into a session folder, a file they could not read themselves. A file
    swapped or written to between the check and the rename is put back.
    """
    *parents, name = rel.split("/")
    try:
        fd = open_dir(folder, parents)
    except FileNotFoundError:
        return Moved.GONE
    try:
        st = _lstat_retrying(name, fd)
        if st is not None:
            _check_ours(st, allow_links, "")
            if expect is not None and (st.st_size, st.st_mtime_ns) != expect:
                return Moved.CHANGED
        moved = move(name, dst, expect, src_dir_fd=fd)
        got = _lstat_retrying(dst) if moved is Moved.DONE and st is not None else None
        if st is not None and got is not None and not _same(st, got):
            put_back = _put_back(dst, name, fd)
            _check_ours(got, allow_links, ", swapped in while it was claimed")
            # A file written to just now: judged again later if it could be put back; else it
            # is ours now, and the checks for late writes guard it.
            return Moved.CHANGED if put_back else Moved.DONE
        return moved
    finally:
        os.close(fd)


def _check_ours(st: os.stat_result, allow_links: bool, when: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotOurs(f"a {kind_of(st.st_mode)}, not a regular file{when}")
    if st.st_nlink > 1 and not allow_links:
        raise NotOurs(
            f"a file with {st.st_nlink} hard links: it may belong to someone else"
            f"{when} (APP_ALLOW_HARD_LINKS=true takes such files)"
        )


def _put_back(src: Path, name: str, dir_fd: int) -> bool:
    """Return something that is not ours to where it came from, if that name is still free."""
    with _MOVE_LOCK:
        if _lstat_retrying(name, dir_fd) is not None:
            return False
        os.rename(src, name, dst_dir_fd=dir_fd)
        return True


def return_to(src: Path, dst: Path) -> bool:
    """Move an entry that is not ours (found in .processing) back to incoming, never over
    anything; False when the name there is taken (then it stays where it is)."""
    with _MOVE_LOCK:
        if _lstat_retrying(dst) is not None:
            return False
        os.makedirs(dst.parent, exist_ok=True)
        os.rename(src, dst)
        return True


# --- copying -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """What was read from NFS: the file's size and mtime when it was opened, and the MD5 of the
    very bytes read."""

    size: int
    md5: bytes
    mtime_ns: int = 0


# Takes each block of a file being copied: (index, bytes, MD5). Called in the copy's thread.
BlockSink = Callable[[int, bytes, bytes], None]


@dataclass(frozen=True, slots=True)
class Staged:
    """How the bytes read go out: from memory (`data`: small files are not written to the
    staging disk), or from the staging file in one request, or in blocks of `block_size`, each
    sent with its MD5 (`block_md5s`) so that Azure itself checks it."""

    read: Read
    data: bytes | None = None
    block_size: int = 0
    block_md5s: tuple[bytes, ...] = ()
    # Ids of the blocks already staged while the file was read (early.py), for the log.
    sent_early: frozenset[str] = frozenset()


def open_regular(path: Path) -> int:
    """Open `path` for reading if it is a regular file: no symbolic link is followed and a FIFO
    cannot block the open (O_NONBLOCK); the type is checked on the descriptor itself."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOurs("a symbolic link, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotOurs(f"a {kind_of(mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_and_hash(
    src: Path,
    dst: Path,
    progress: Callable[[], None] = lambda: None,
    block_size: int = 0,
    single_put_size: int = 0,
    in_memory_max: int = 0,
    on_block: BlockSink | None = None,
) -> Staged:
    """Copy `src` to `dst`, hashing the very buffers read from `src`.

    A file of at most `in_memory_max` bytes is kept in memory instead (`Staged.data`): writing
    it to disk only to read it back at once buys nothing, the NFS copy being the source of truth.

    Files larger than `single_put_size` also get an MD5 per block of `block_size` bytes: each
    block is later sent with it, so Azure itself checks that what it receives is what was read
    from NFS. No fsync: the staged copy is a cache of the NFS file, which stays the source of
    truth until the blob is committed (after a crash everything is staged again).

    With `on_block`, each block of such a file is handed to it (index, bytes, MD5) as soon as it
    was read, hashed and written to staging, so that it can go out while the rest is read; the
    size and mtime checks still come after the whole file.
    """
    with FileIO(open_regular(src), "rb", closefd=True) as fin:
        st = os.fstat(fin.fileno())
        expected = st.st_size
        if expected <= in_memory_max:
            data = _read_all(fin, expected)
            _check_complete(fin.fileno(), len(data), st, src)
            progress()
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            return Staged(Read(len(data), md5, st.st_mtime_ns), data=data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with FileIO(os.open(dst, _WRITE_FLAGS, 0o600), "wb", closefd=True) as fout:
            blocked = block_size > 0 and expected > single_put_size
            if blocked and on_block is not None:
                size, md5, block_md5s = _copy_blocks(fin, fout, block_size, progress, on_block)
            else:
                size, md5, block_md5s = _copy_hashing(
                    fin, fout, block_size if blocked else 0, progress
                )
        _check_complete(fin.fileno(), size, st, src)
    read = Read(size, md5, st.st_mtime_ns)
    return Staged(read, block_size=block_size if blocked else 0, block_md5s=block_md5s)


def _read_all(fin: FileIO, expected: int) -> bytes:
    """Read to the end of file (one read may return less than asked for)."""
    parts: list[bytes] = []
    while chunk := fin.read(max(expected, 1) + 1):
        parts.append(chunk)
    return b"".join(parts)


def _copy_hashing(
    fin: FileIO, fout: FileIO, block_size: int, progress: Callable[[], None]
) -> tuple[int, bytes, tuple[bytes, ...]]:
    """Copy, returning the size, the MD5, and the MD5 of each block when `block_size`."""
    md5 = hashlib.md5(usedforsecurity=False)
    block = hashlib.md5(usedforsecurity=False)
    block_md5s: list[bytes] = []
    in_block = size = 0
    buf = bytearray(min(COPY_CHUNK, block_size) if block_size else COPY_CHUNK)
    view = memoryview(buf)
    while n := fin.readinto(buf):
        chunk = view[:n]
        md5.update(chunk)
        start = 0
        while block_size and start < n:  # split the chunk at block boundaries
            take = min(n - start, block_size - in_block)
            block.update(chunk[start : start + take])
            in_block += take
            start += take
            if in_block == block_size:
                block_md5s.append(block.digest())
                block = hashlib.md5(usedforsecurity=False)
                in_block = 0
        _write_all(fout, chunk)
        size += n
        progress()
    if in_block:
        block_md5s.append(block.digest())
    return size, md5.digest(), tuple(block_md5s)


def _copy_blocks(
    fin: FileIO, fout: FileIO, block_size: int, progress: Callable[[], None], on_block: BlockSink
) -> tuple[int, bytes, tuple[bytes, ...]]:
    """Like `_copy_hashing` with blocks, reading each block in one read (the kernel copies it
    straight into the bytes object that is then hashed, written and handed to `on_block`; the
    last block may be shorter)."""
    md5 = hashlib.md5(usedforsecurity=False)
    block_md5s: list[bytes] = []
    size = 0
    while data := fin.read(block_size):
        if len(data) < block_size:  # a short read before the end: read on, join once
            parts = [data]
            while (got := sum(map(len, parts))) < block_size and (
                more := fin.read(block_size - got)
            ):
                parts.append(more)
            data = b"".join(parts)
        md5.update(data)
        block_md5s.append(hashlib.md5(data, usedforsecurity=False).digest())
        _write_all(fout, memoryview(data))
        size += len(data)
        progress()
        on_block(len(block_md5s) - 1, data, block_md5s[-1])
        if len(data) < block_size:
            break
    return size, md5.digest(), tuple(block_md5s)


def _write_all(fout: FileIO, chunk: memoryview) -> None:
    written = 0
    while written < len(chunk):
        written += fout.write(chunk[written:]) or 0


def _check_complete(fd: int, got: int, at_open: os.stat_result, src: Path) -> None:
    """A read error on NFS (or FUSE) readahead can surface as an early end of file rather than
    as EIO: never take a short read for the whole file. A file written to while it was read is
    read again later."""
    now = os.fstat(fd)
    if got != at_open.st_size or now.st_size != at_open.st_size:
        raise OSError(
            errno.EIO,
            f"short read: {got} bytes read, size {at_open.st_size} at open, {now.st_size} now",
            str(src),
        )
    if now.st_mtime_ns != at_open.st_mtime_ns:
        raise OSError(errno.EAGAIN, "the file was written to while it was read", str(src))


def unchanged(path: Path, size: int, mtime_ns: int) -> bool:
    """True when `path` still has the size and mtime it had when it was read."""
    st = os.stat(path, follow_symlinks=False)
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


# --- state files and trees -----------------------------------------------------------------


def write_atomic(path: Path, data: bytes, tmp_prefix: str) -> None:
    """Write `data` to `path` so that a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{tmp_prefix}{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path, label: str) -> Path:
    """Move a file the service cannot use (a damaged state file) out of the way, to
    `<name>.<label>-<ns>` beside it, never over another file; returns where it went."""
    while True:
        aside = path.with_name(f"{path.name}.{label}-{time.time_ns()}")
        if move(path, aside) is not Moved.TAKEN:
            return aside


def read_or_none(path: Path) -> bytes | None:
    """The bytes of a small state file; None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def iter_tree_files(root: Path) -> Iterator[tuple[str, str, str, Path]]:
    """Yield (date_prefix, session_name, rel, path) for regular files anywhere below
    `root/<YYYYMMDD>/<session>/`, in name order; symbolic links are not followed."""
    for date_dir in _listdir(root):
        if DATE_DIR_RE.fullmatch(date_dir.name) and date_dir.is_dir(follow_symlinks=False):
            for session_dir in _listdir(Path(date_dir.path)):
                if session_dir.is_dir(follow_symlinks=False):
                    for rel, path in _walk_files(Path(session_dir.path), ""):
                        yield date_dir.name, session_dir.name, rel, path


def _listdir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of `folder` in name order; none if it is missing."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def files_below(folder: Path) -> list[str]:
    """The paths, relative to `folder`, of the regular files anywhere below it."""
    return [rel for rel, _ in _walk_files(folder, "")]


def _walk_files(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for entry in _listdir(folder):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file(follow_symlinks=False):
            yield prefix + entry.name, Path(entry.path)


def prune_empty_dirs(root: Path, keep: Callable[[str, str], bool]) -> int:
    """Remove empty folders below `root/<date>/<session>/` (then the session and date folders
    when they are empty) unless `keep(date, session)`. Returns how many were removed."""
    removed = 0
    for date_dir in _listdir(root):
        if not DATE_DIR_RE.fullmatch(date_dir.name) or not date_dir.is_dir(follow_symlinks=False):
            continue
        for session_dir in _listdir(Path(date_dir.path)):
            if session_dir.is_dir(follow_symlinks=False) and not keep(
                date_dir.name, session_dir.name
            ):
                removed += _prune(Path(session_dir.path))
        removed += _rmdir(Path(date_dir.path))
    return removed


def _prune(folder: Path) -> int:
    """Remove the empty folders in `folder`, bottom up, then `folder` itself if empty."""
    removed = 0
    for entry in _listdir(folder):
        if entry.is_dir(follow_symlinks=False):
            removed += _prune(Path(entry.path))
    return removed + _rmdir(folder)


def _rmdir(folder: Path) -> int:
    try:
        os.rmdir(folder)
        return 1
    except OSError:
        return 0  # not empty, or gone: both fine
