"""The claim rename, copy-and-hash and atomic writes, on real files."""

import errno
import hashlib
import os
from pathlib import Path

import pytest

from nfs_watcher_uploader.intake.filters import FileFilter
from nfs_watcher_uploader.nfs import copying, moves, state, trees
from nfs_watcher_uploader.nfs.scan import scan_session


def test_move_creates_missing_destination_folder(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a"
    src.parent.mkdir()
    src.write_bytes(b"x")
    dst = tmp_path / "proc" / "20260101" / "s" / "a"
    assert moves.move(src, dst) is moves.Moved.DONE
    assert dst.read_bytes() == b"x" and not src.exists()


def test_move_of_vanished_source_is_a_lost_race(tmp_path: Path) -> None:
    assert moves.move(tmp_path / "gone", tmp_path / "dst" / "gone") is moves.Moved.GONE


def test_move_whose_rename_already_happened_counts_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An NFS retransmission of a rename that succeeded answers ENOENT: the file is at dst.
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x")
    real = os.rename

    def lost_reply(a: str | Path, b: str | Path, **kw: object) -> None:
        real(a, b)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "rename", lost_reply)
    assert moves.move(src, dst) is moves.Moved.DONE
    assert dst.read_bytes() == b"x"


def test_move_never_replaces_and_judges_by_inode(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    assert moves.move(src, dst) is moves.Moved.TAKEN
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
    # Someone else's file at dst after src vanished is not "moved".
    src.unlink()
    assert moves.move(src, dst) is moves.Moved.GONE


def test_move_retries_a_stale_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x")
    real = os.rename
    calls: list[int] = []

    def flaky(a: str | Path, b: str | Path, **kw: object) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ESTALE, "Stale file handle")
        real(a, b)

    monkeypatch.setattr(os, "rename", flaky)
    assert moves.move(src, tmp_path / "b") is moves.Moved.DONE
    assert len(calls) == 3


def test_copy_and_hash(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "src"
    src.write_bytes(data)
    ticks: list[int] = []
    copied = copying.copy_and_hash(src, tmp_path / "deep" / "dst", lambda: ticks.append(1))
    assert copied.read.size == len(data)
    assert copied.read.md5 == hashlib.md5(data).digest()
    assert (tmp_path / "deep" / "dst").read_bytes() == data
    assert len(ticks) >= 3


def test_copy_hashes_each_block_of_a_large_file(tmp_path: Path) -> None:
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


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.write_atomic(path, b"one", ".tmp-")
    state.write_atomic(path, b"two", ".tmp-")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_scan_skips_links_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"12")
    (tmp_path / "b.txt").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.bin").symlink_to(tmp_path / "a.bin")
    everything = FileFilter(defaults=False)
    scan = scan_session(tmp_path, everything)
    assert set(scan.files) == {"a.bin", "b.txt"}
    assert scan.ignored == {"link.bin": "a symbolic link, not a regular file"}
    bins = FileFilter(extensions=frozenset({".bin"}), defaults=False)
    assert set(scan_session(tmp_path, bins).files) == {"a.bin"}
    assert scan_session(tmp_path / "missing", everything).files == {}


def test_scan_skips_the_stat_of_files_too_young_to_claim(tmp_path: Path) -> None:
    (tmp_path / "young").write_bytes(b"1")
    (tmp_path / "old").write_bytes(b"1")
    known = {"young": (99, 2_000), "old": (99, 1_000), "gone": (1, 1)}
    result = scan_session(tmp_path, FileFilter(defaults=False), known, young_ns=1_500).files
    assert result["young"] == (99, 2_000)  # carried, not stat'ed
    assert result["old"][0] == 1  # stat'ed: real size
    assert "gone" not in result  # the listing still says what exists


def test_prune_keeps_live_sessions(tmp_path: Path) -> None:
    for s in ("live", "idle", "busy"):
        (tmp_path / "20260101" / s).mkdir(parents=True)
    (tmp_path / "20260101" / "busy" / "file").write_bytes(b"x")
    trees.prune_empty_dirs(tmp_path, lambda d, s: s == "live")
    assert sorted(p.name for p in (tmp_path / "20260101").iterdir()) == ["busy", "live"]
