"""A copy from NFS holds and hashes exactly the bytes it read, per block too, and a short read is
never taken for the whole file."""

import hashlib
import os
from pathlib import Path

import pytest

from nfs_watcher_uploader.nfs import copying


def test_a_copy_holds_and_hashes_exactly_the_bytes_read(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "src"
    src.write_bytes(data)
    ticks: list[int] = []
    copied = copying.copy_and_hash(src, tmp_path / "deep" / "dst", lambda: ticks.append(1))
    assert copied.read.size == len(data)
    assert copied.read.md5 == hashlib.md5(data).digest()
    assert (tmp_path / "deep" / "dst").read_bytes() == data
    assert len(ticks) >= 3


def test_a_copy_hashes_each_block_of_a_large_file(tmp_path: Path) -> None:
    data = os.urandom(1000 * 1024 + 5)
    src = tmp_path / "src"
    src.write_bytes(data)
    block = 256 * 1024
    copied = copying.copy_and_hash(src, tmp_path / "dst", block_size=block, single_put_size=block)
    expected = [hashlib.md5(data[i : i + block]).digest() for i in range(0, len(data), block)]
    assert copied.block_md5s == tuple(expected) and copied.block_size == block
    small = copying.copy_and_hash(
        src, tmp_path / "dst2", block_size=block, single_put_size=len(data)
    )
    assert small.block_md5s == () and small.read.md5 == hashlib.md5(data).digest()


def test_a_short_read_is_an_error_not_the_end_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on a readahead page can reach the reader as an early EOF (seen on the FUSE layer)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(300 * 1024))
    real_fstat = os.fstat

    def bigger(fd: int) -> os.stat_result:  # the file is larger than what read() returns
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size + 4096, *st[7:]))

    monkeypatch.setattr(os, "fstat", bigger)
    for in_memory in (0, 1024 * 1024):
        with pytest.raises(OSError, match="short read"):
            copying.copy_and_hash(src, tmp_path / "dst", in_memory_max=in_memory)
