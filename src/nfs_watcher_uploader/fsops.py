"""Blocking filesystem steps, and `Nfs`, which runs them in threads with a deadline.

Every call that touches NFS goes through `Nfs.call` so that a hung mount (a `hard` mount whose
server went away blocks every syscall) never blocks the event loop: the call is abandoned after
`timeout` seconds and raises TimeoutError (an OSError), which callers treat as transient.
"""

import asyncio
import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

import anyio
import anyio.to_thread

from nfs_watcher_uploader.constants import COPY_CHUNK, DATE_DIR_RE

# name -> (size, mtime_ns): what the watcher compares between two scans.
ScanMap = dict[str, tuple[int, int]]
# Stands for "present, but its attributes could not be read this time" (a stale handle): the
# file is neither ready nor gone.
UNKNOWN = (-1, -1)

# Errors that say "the file (or a handle on it) is gone". On NFS, ESTALE may also be a passing
# fault, so callers look again before drawing a conclusion.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})


class Nfs:
    """Runs blocking filesystem calls in worker threads, each with a deadline."""

    def __init__(self, timeout: float, max_threads: int = 16) -> None:
        self.timeout = timeout
        self._limiter = anyio.CapacityLimiter(max_threads)

    async def call[T](self, fn: Callable[[], T], timeout: float | None = None) -> T:
        deadline = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(deadline):
                return await anyio.to_thread.run_sync(
                    fn, abandon_on_cancel=True, limiter=self._limiter
                )
        except TimeoutError:
            raise TimeoutError(
                errno.ETIMEDOUT, f"NFS call timed out after {deadline:g} s"
            ) from None

    async def call_watched[T](self, fn: Callable[[], T], last_progress: Callable[[], float]) -> T:
        """Like `call` for long copies: no overall deadline, but give up once `last_progress()`
        (a monotonic time the function updates as it goes) is older than the timeout."""
        task = asyncio.ensure_future(
            anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._limiter)
        )
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.timeout / 4)
                if done:
                    return task.result()
                if time.monotonic() - last_progress() > self.timeout:
                    raise TimeoutError(errno.ETIMEDOUT, f"NFS copy stalled for {self.timeout:g} s")
        finally:
            task.cancel()


def scan_dir(
    path: Path, extensions: frozenset[str], known: ScanMap | None = None, young_ns: int = 0
) -> ScanMap:
    """Regular files directly in `path` (no symlinks), filtered by extension; {} if missing.

    A name in `known` whose mtime is after `young_ns` keeps its known (size, mtime) without a
    stat: it is too young to be claimed now, and a write would only make it younger. (The stat
    is most of a scan's cost: 10,000 files are 10,000 syscalls.)
    """
    result: ScanMap = {}
    known = known or {}
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                name = entry.name
                if extensions and os.path.splitext(name)[1].lower() not in extensions:
                    continue
                seen = known.get(name)
                if seen is not None and seen[1] > young_ns:
                    result[name] = seen
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ESTALE:
                        result[name] = UNKNOWN
                        continue
                    raise
                result[name] = (st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        pass
    return result


def exists(path: Path) -> bool:
    """Like os.path.lexists, but only a real ENOENT means "absent": ESTALE, EIO or a timeout
    raise, because on NFS they say nothing about whether the file is there."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _exists_retrying(path: Path, attempts: int = 5) -> bool:
    for attempt in range(attempts):
        try:
            return exists(path)
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def move(src: Path, dst: Path) -> bool:
    """Rename `src` to `dst`, creating `dst`'s folder when it is missing.

    Returns True when the file is now at `dst`, False when `src` is gone and `dst` is not there
    (another claimant took it, or it was deleted). An ENOENT from rename is ambiguous: the source
    may be gone, the destination folder may be missing (GC pruned it), or an NFS retransmission
    of a rename that already succeeded may report ENOENT. So look at both sides before deciding.
    """
    for _ in range(5):
        try:
            os.rename(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in GONE_ERRNOS:
                raise
            if not _exists_retrying(src):
                return _exists_retrying(dst)
            # The source is still there: the destination folder is missing, or a handle went
            # stale. Make sure the folder exists and try again.
            os.makedirs(dst.parent, exist_ok=True)
    raise OSError(errno.ESTALE, f"rename kept failing: {src} -> {dst}")


@dataclass(frozen=True, slots=True)
class Copied:
    """What was read from NFS: its size, its MD5, and the MD5 of each block of `block_size`
    bytes (empty when the file was small enough to go up in one request)."""

    size: int
    md5: bytes
    block_size: int = 0
    block_md5s: tuple[bytes, ...] = ()
    # Small files are staged in memory rather than on disk (see copy_and_hash).
    data: bytes | None = None


def copy_and_hash(
    src: Path,
    dst: Path,
    progress: Callable[[], None] = lambda: None,
    block_size: int = 0,
    single_put_size: int = 0,
    in_memory_max: int = 0,
) -> Copied:
    """Copy `src` to `dst`, hashing the very buffers read from `src`.

    A file of at most `in_memory_max` bytes is kept in memory instead (`Copied.data`): writing
    it to disk only to read it back at once buys nothing, the NFS copy being the source of truth.

    Files larger than `single_put_size` also get an MD5 per block of `block_size` bytes: each
    block is later sent with it, so Azure itself checks that what it receives is what was read
    from NFS. No fsync: the staged copy is a cache of the NFS file, which stays the source of
    truth until the blob is committed (after a crash everything is staged again).
    """
    with open(src, "rb", buffering=0) as fin:
        expected = os.fstat(fin.fileno()).st_size
        if expected <= in_memory_max:
            data = _read_all(fin, expected)
            _check_complete(fin.fileno(), len(data), expected, src)
            progress()
            return Copied(len(data), hashlib.md5(data, usedforsecurity=False).digest(), data=data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb", buffering=0) as fout:
            blocked = block_size > 0 and expected > single_put_size
            copied = _copy_hashing(fin, fout, block_size if blocked else 0, progress)
        _check_complete(fin.fileno(), copied.size, expected, src)
    return copied


def _read_all(fin: FileIO, expected: int) -> bytes:
    """Read to the end of file (one read may return less than asked for)."""
    parts: list[bytes] = []
    while chunk := fin.read(max(expected, 1) + 1):
        parts.append(chunk)
    return b"".join(parts)


def _copy_hashing(
    fin: FileIO, fout: FileIO, block_size: int, progress: Callable[[], None]
) -> Copied:
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
        written = 0
        while written < n:
            written += fout.write(chunk[written:]) or 0
        size += n
        progress()
    if in_block:
        block_md5s.append(block.digest())
    return Copied(size, md5.digest(), block_size, tuple(block_md5s))


def _check_complete(fd: int, got: int, expected: int, src: Path) -> None:
    """A read error on NFS (or FUSE) readahead can surface as an early end of file rather than
    as EIO: never take a short read for the whole file."""
    now = os.fstat(fd).st_size
    if got != expected or now != expected:
        raise OSError(
            errno.EIO, f"short read: {got} bytes read, size {expected} at open, {now} now", str(src)
        )


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


def iter_tree_files(root: Path) -> Iterator[tuple[str, str, Path]]:
    """Yield (date_prefix, session_name, path) for files in `root/<YYYYMMDD>/<session>/`."""
    try:
        date_dirs = sorted(
            (e for e in os.scandir(root) if DATE_DIR_RE.fullmatch(e.name)), key=lambda e: e.name
        )
    except FileNotFoundError:
        return
    for date_dir in date_dirs:
        if not date_dir.is_dir(follow_symlinks=False):
            continue
        for session_dir in sorted(os.scandir(date_dir.path), key=lambda e: e.name):
            if not session_dir.is_dir(follow_symlinks=False):
                continue
            for entry in sorted(os.scandir(session_dir.path), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False):
                    yield date_dir.name, session_dir.name, Path(entry.path)


def prune_empty_dirs(root: Path, keep: Callable[[str, str], bool]) -> int:
    """Remove empty `root/<date>/<session>/` folders (and then empty date folders) unless
    `keep(date, session)`. Returns how many folders were removed."""
    removed = 0
    try:
        date_dirs = [e for e in os.scandir(root) if DATE_DIR_RE.fullmatch(e.name)]
    except FileNotFoundError:
        return 0
    for date_dir in date_dirs:
        if not date_dir.is_dir(follow_symlinks=False):
            continue
        for session_dir in os.scandir(date_dir.path):
            if not session_dir.is_dir(follow_symlinks=False):
                continue
            if keep(date_dir.name, session_dir.name):
                continue
            try:
                os.rmdir(session_dir.path)
                removed += 1
            except OSError:
                pass  # not empty, or gone: both fine
        try:
            os.rmdir(date_dir.path)
            removed += 1
        except OSError:
            pass
    return removed
