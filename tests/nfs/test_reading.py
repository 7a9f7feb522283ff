"""The one reader of what the service reads back from the share: a regular file of at most its
cap, never through a link, never waiting on a FIFO; JSON no deeper than the bound, checked for
its shape, whatever the bytes; and a file it cannot use set aside, never over another."""

import os
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from nfs_watcher_uploader.nfs.reading import (
    Unusable,
    check_depth,
    parse_json,
    read_lines,
    read_regular,
    set_aside,
)


class _Doc(BaseModel):
    reason: str


def test_a_regular_file_within_its_cap_is_read_and_a_missing_one_is_none(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    assert read_regular(tmp_path / "f", 5) == b"12345"
    assert read_regular(tmp_path / "missing", 5) is None
    assert read_regular(tmp_path / "missing" / "below", 5) is None


@pytest.mark.parametrize("what", ["link", "fifo", "folder", "too large", "device"])
def test_anything_but_a_regular_file_within_its_cap_is_unusable_at_once(
    tmp_path: Path, what: str
) -> None:
    path = tmp_path / "state.json"
    if what == "link":
        (tmp_path / "target").write_bytes(b"{}")
        path.symlink_to(tmp_path / "target")
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "folder":
        path.mkdir()
    elif what == "too large":
        path.write_bytes(b" " * 1001)
    else:
        path = Path("/dev/zero")
    started = time.monotonic()
    with pytest.raises(Unusable):
        read_regular(path, 1000)
    assert time.monotonic() - started < 1.0


def test_lines_come_one_by_one_and_a_line_past_its_cap_comes_as_none(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"one\n" + b"x" * 50 + b"\ntwo\n" + b"y" * 3_000_000 + b"\nthree")
    lines = read_lines(path, 10_000_000, 20)
    assert lines is not None and list(lines) == [b"one", None, b"two", None, b"three"]


def test_nesting_past_the_bound_is_refused_before_any_parser_recurses() -> None:
    check_depth(b'{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}')  # in a string
    check_depth(b"[" * 32 + b"]" * 32)
    with pytest.raises(Unusable, match="nested deeper"):
        check_depth(b"[" * 33 + b"]" * 33)
    with pytest.raises(Unusable, match="nested deeper"):
        parse_json(b'{"reason": ' + b"[" * 1_000_000, _Doc)
    started = time.monotonic()  # linear, whatever the bytes: an unterminated string runs on
    check_depth(b'["' + b'\\"' * 2_000_000 + b"[" * 100)
    with pytest.raises(Unusable):
        check_depth(b'"a\\"",' * 500_000 + b"[" * 100)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "raw", [b"", b"\xff\xfe", b"[]", b'{"reason": 1}', b'{"reason": "x"', b"1" * 5000]
)
def test_whatever_the_bytes_a_parse_fails_as_unusable_and_nothing_else(raw: bytes) -> None:
    with pytest.raises(Unusable):
        parse_json(raw, _Doc)


def test_a_file_set_aside_keeps_its_path_under_set_aside_and_never_replaces_another(
    tmp_path: Path,
) -> None:
    root = tmp_path / ".processing"
    path = root / "_reports" / "job.json"
    path.parent.mkdir(parents=True)
    first = []
    for content in (b"one", b"two"):
        path.write_bytes(content)
        first.append(set_aside(path, "unusable", root=root))
    assert all(p.parent == root / "_set_aside" / "_reports" for p in first)
    assert sorted(p.read_bytes() for p in first) == [b"one", b"two"]
    link = root / "sessions.json"
    link.symlink_to(tmp_path / "elsewhere")
    aside = set_aside(link, "damaged")
    assert aside.parent == root and aside.is_symlink() and not (tmp_path / "elsewhere").exists()
