"""The service's own state files are written whole or not at all, set aside (never overwritten)
when damaged, and loaded again when NFS fails."""

import errno
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from nfs_watcher_uploader.nfs import state
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.state import StateFile, StateFileError
from nfs_watcher_uploader.rates import parse_rate, zone
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.uplink.bandwidth import Bandwidth


class FailingCall(Nfs):
    """Real NFS calls, but the calls numbered in `fail` raise EIO (counted from 1)."""

    def __init__(self, fail: set[int]) -> None:
        super().__init__(5)
        self.fail, self.calls = fail, 0

    async def call[T](self, fn: Callable[[], T], timeout: float | None = None) -> T:
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(errno.EIO, "Input/output error")
        return await super().call(fn, timeout)


def _aside(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f"{name}.damaged-")]


def test_an_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.write_atomic(path, b"one", ".tmp-")
    state.write_atomic(path, b"two", ".tmp-")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


async def test_a_damaged_sessions_file_that_cannot_be_set_aside_is_kept_and_loaded_again(
    tmp_path: Path,
) -> None:
    damaged = b'{"version": 1, "sessions": [{"name": "../x"}]}'
    (tmp_path / "sessions.json").write_bytes(damaged)
    nfs = FailingCall(fail={2})  # 1: the read, 2: setting it aside
    sessions = Sessions(tmp_path, nfs)
    await sessions.load()
    assert not sessions.loaded  # the service tries again; start and stop answer 503 meanwhile
    assert sessions.state_error is not None and "cannot be set aside" in sessions.state_error
    assert (tmp_path / "sessions.json").read_bytes() == damaged and not _aside(
        tmp_path, "sessions.json"
    )
    await sessions.load()
    assert sessions.loaded and sessions.by_name == {}
    assert "damaged session state file" in (sessions.state_error or "")
    (aside,) = _aside(tmp_path, "sessions.json")
    assert aside.read_bytes() == damaged and not (tmp_path / "sessions.json").exists()


async def test_a_damaged_bandwidth_file_that_cannot_be_set_aside_is_kept_and_loaded_again(
    tmp_path: Path,
) -> None:
    damaged = b'{"limit": "12Q"}'
    (tmp_path / "bandwidth.json").write_bytes(damaged)
    bandwidth = Bandwidth(None, None, zone("UTC"), FailingCall(fail={2}), tmp_path)
    with pytest.raises(StateFileError, match="cannot be set aside"):
        await bandwidth.load()
    assert not bandwidth.loaded and (tmp_path / "bandwidth.json").read_bytes() == damaged
    await bandwidth.load()
    assert bandwidth.loaded and bandwidth.override is None
    (aside,) = _aside(tmp_path, "bandwidth.json")
    assert aside.read_bytes() == damaged


@pytest.mark.parametrize(
    "raw",
    [b"{" * 100_000, b'{"limit": 1' + b"0" * 400 + b"}", b"[]", b"\xff\xfe", b'{"other": 1}'],
    ids=["deeply-nested", "huge-number", "a-list", "not-utf8", "no-limit"],
)
async def test_whatever_a_state_file_holds_it_is_set_aside_never_raised(
    tmp_path: Path, raw: bytes
) -> None:
    def parse(data: bytes) -> int | None:  # the bandwidth override's own reading
        return parse_rate(str(json.loads(data)["limit"]))

    state = StateFile(tmp_path / "bandwidth.json", Nfs(5), ".tmp-", 64 * 1024)
    state.path.write_bytes(raw)
    loaded = await state.load(parse)
    assert loaded.value is None and loaded.damaged and loaded.aside is not None
    assert loaded.aside.read_bytes() == raw and not state.path.exists()


async def test_no_state_file_is_nothing_to_load(tmp_path: Path) -> None:
    loaded = await StateFile(tmp_path / "sessions.json", Nfs(5), ".tmp-", 64 * 1024).load(
        bytes.decode
    )
    assert loaded.value is None and loaded.damaged is None
