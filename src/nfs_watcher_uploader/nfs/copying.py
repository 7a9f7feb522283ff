"""Copying a file from NFS to staging while hashing the very bytes read: the whole file's MD5
and, for a file sent in blocks, each block's."""

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from nfs_watcher_uploader.constants import (
    COPY_CHUNK,
)
from nfs_watcher_uploader.nfs.opening import open_regular

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


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
    # Ids of the blocks already staged while the file was read (blob/early), for the log.
    sent_early: frozenset[str] = frozenset()


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
    straight into the bytes object that is hashed, handed to `on_block` and written; the last
    block may be shorter). A block goes to `on_block` as soon as its own MD5 is known, before
    the whole file's MD5 takes it in and before it is written to staging: it goes out that much
    earlier, and the staging file, the source of any retry, is still whole before the upload
    that may need it starts (after the copy)."""
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
        block_md5s.append(hashlib.md5(data, usedforsecurity=False).digest())
        on_block(len(block_md5s) - 1, data, block_md5s[-1])
        md5.update(data)
        _write_all(fout, memoryview(data))
        size += len(data)
        progress()
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
