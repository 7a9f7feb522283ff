"""The leader's take-over of the trees nobody owns (replicas/adoption.leftovers), one step at a
time, with stand-ins for the service's parts: what it renames, and what it must leave."""

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from nfs_watcher_uploader.cloud.retention import DAY_S, LedgerRetention
from nfs_watcher_uploader.constants import OWNERS_DIR
from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.coord.roster import View
from nfs_watcher_uploader.nfs import single_mark
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.replicas.adoption import Adoption
from nfs_watcher_uploader.replicas.runtime import Replicas


class _Nfs:
    timeout = 5.0

    async def call(self, fn: Any, timeout: float | None = None) -> Any:
        return fn()


async def _nothing() -> None:
    return None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _adoption(base_root: Path, monotonic: _Clock | None = None) -> tuple[Adoption, list[object]]:
    me = new_incarnation()
    queued: list[object] = []
    membership = SimpleNamespace(incarnation=me, coordinator=None, member=None, valid=lambda: True)
    layout = SimpleNamespace(
        processing_root=base_root / OWNERS_DIR / me, as_completed=lambda item: item
    )
    sessions = SimpleNamespace(for_item=lambda item: SimpleNamespace(found_parked=lambda rel: None))
    adoption = Adoption(
        cast(Any, membership),
        base_root,
        cast(Any, layout),
        cast(Any, _Nfs()),
        cast(Any, SimpleNamespace(put=queued.append)),
        cast(Any, sessions),
        cast(Any, SimpleNamespace(take_over=_nothing)),
        cast(Any, SimpleNamespace(take_over=_nothing)),
        lambda urgent: 0,
        monotonic=monotonic or _Clock(),
    )
    return adoption, queued


def _touched(processing: Path) -> None:
    """A touch of the mark by the single replica that the next look can tell from the last
    (two touches within one tick of the file system's clock look alike)."""
    before = single_mark.signature(processing)
    for _ in range(100_000):
        single_mark.touch(processing)
        if single_mark.signature(processing) != before:
            return
    raise AssertionError("the mark never changed")


def _claimed(base_root: Path) -> Path:
    claimed = base_root / "20261204" / "take1" / "a.bin"
    claimed.parent.mkdir(parents=True)
    claimed.write_bytes(b"being uploaded by the single replica")
    return claimed


@pytest.mark.adversarial
def test_a_file_a_running_single_replica_has_claimed_is_not_taken_from_it(
    tmp_path: Path,
) -> None:
    """Review of issue 24, finding 4. A rolling update that mixes a replica without
    coordination (APP_COORDINATION=none) with replicas on one share: the leader's first pass
    renamed what the single replica had just claimed (its tree at the processing root) into
    its own tree and queued it, while the single replica uploaded it too. A single replica
    keeps a mark on the share while it runs; while that mark changes, its tree is its own,
    however long it runs."""
    base_root = tmp_path / ".processing"
    claimed = _claimed(base_root)
    clock = _Clock()
    adoption, queued = _adoption(base_root, clock)

    for _ in range(3 * int(single_mark.STALE_S / single_mark.TOUCH_EVERY_S)):
        _touched(base_root)
        anyio.run(adoption.leftovers, View(()))
        clock.now += single_mark.TOUCH_EVERY_S

    assert claimed.exists(), "taken from under a single replica that still runs"
    assert queued == []


def test_the_files_of_a_single_replica_killed_without_its_clean_stop_are_taken_over(
    tmp_path: Path,
) -> None:
    """A single replica killed (SIGKILL, a node lost) leaves its mark, which then stops
    changing: its files are taken over once it has looked the same for STALE_S on the
    leader's clock, and not before."""
    base_root = tmp_path / ".processing"
    claimed = _claimed(base_root)
    clock = _Clock()
    adoption, queued = _adoption(base_root, clock)
    _touched(base_root)

    anyio.run(adoption.leftovers, View(()))
    clock.now += single_mark.STALE_S - 1
    anyio.run(adoption.leftovers, View(()))
    assert claimed.exists(), "taken before the mark was stale"
    clock.now += 2
    anyio.run(adoption.leftovers, View(()))

    assert not claimed.exists()
    assert len(queued) == 1


@pytest.mark.parametrize("stopped", ["cleanly", "never marked"])
def test_the_files_of_a_single_replica_that_stopped_cleanly_are_taken_over_at_once(
    tmp_path: Path, stopped: str
) -> None:
    """A single replica that stopped cleanly removed its mark (and a share that never had one
    run this version): its tree is taken at the leader's first look."""
    base_root = tmp_path / ".processing"
    claimed = _claimed(base_root)
    adoption, queued = _adoption(base_root)
    if stopped == "cleanly":
        _touched(base_root)
        single_mark.remove(base_root)

    anyio.run(adoption.leftovers, View(()))

    assert not claimed.exists()
    assert len(queued) == 1


def _plant(mark: Path, planted: str, tmp_path: Path) -> None:
    if planted == "link":
        target = tmp_path / "changing"
        target.write_bytes(b"")
        mark.symlink_to(target)
    elif planted == "fifo":
        os.mkfifo(mark)
    else:
        mark.mkdir()


@pytest.mark.adversarial
@pytest.mark.parametrize("planted", ["link", "fifo", "folder"])
def test_a_mark_planted_as_a_link_fifo_or_folder_is_no_mark_and_never_stops_the_leader(
    tmp_path: Path, planted: str
) -> None:
    """The mark is read back from the share: a link (to a file that changes), a FIFO or a
    folder in its place is neither followed nor waited on, and does not keep the leader from
    the tree for longer than a mark that stopped changing would."""
    base_root = tmp_path / ".processing"
    claimed = _claimed(base_root)
    mark = base_root / single_mark.SINGLE_FILE
    _plant(mark, planted, tmp_path)
    clock = _Clock()
    adoption, queued = _adoption(base_root, clock)

    anyio.run(adoption.leftovers, View(()))
    clock.now += single_mark.STALE_S
    anyio.run(adoption.leftovers, View(()))

    assert not claimed.exists()
    assert len(queued) == 1
    assert mark.is_symlink() if planted == "link" else mark.exists()


@pytest.mark.adversarial
@pytest.mark.parametrize("planted", ["link", "fifo", "folder"])
def test_a_mark_replaced_by_a_link_fifo_or_folder_never_hands_a_running_single_replicas_files_over(
    tmp_path: Path, planted: str
) -> None:
    """Anyone who may write the share may swap the mark of a single replica that runs for a
    link, a FIFO or a folder. Taken as no mark, that handed the files it was uploading to the
    leader at once (uploaded twice), and the single replica's touches failed from then on. The
    thing planted counts as a mark that does not change, and the single replica's next touch
    sets it aside (never following it) and puts its mark back."""
    base_root = tmp_path / ".processing"
    claimed = _claimed(base_root)
    mark = base_root / single_mark.SINGLE_FILE
    clock = _Clock()
    adoption, queued = _adoption(base_root, clock)
    _touched(base_root)
    anyio.run(adoption.leftovers, View(()))

    mark.unlink()
    _plant(mark, planted, tmp_path)
    anyio.run(adoption.leftovers, View(()))
    assert claimed.exists(), "a running single replica's file taken: its mark was swapped"

    for _ in range(3 * int(single_mark.STALE_S / single_mark.TOUCH_EVERY_S)):
        _touched(base_root)
        anyio.run(adoption.leftovers, View(()))
        clock.now += single_mark.TOUCH_EVERY_S
    assert claimed.exists()
    assert queued == []
    assert not mark.is_symlink() and mark.is_file()
    if planted == "link":
        assert (tmp_path / "changing").read_bytes() == b""  # never followed


@pytest.mark.adversarial
def test_the_leader_never_sweeps_the_ledgers_of_a_single_replica_that_still_runs(
    tmp_path: Path,
) -> None:
    """The leader's ledger retention sweeps the processing root's tree (a single replica's,
    before) as well as its own. While a single replica still runs beside the replicas (a
    rolling update), that tree is the single replica's: its sessions (started after the
    import, or never imported) and what it still has to report are unknown to the leader, which
    removed its ledger of a running session, so its manifest later missed those files. The
    tree is swept only once its files would be taken over: the mark gone or stale."""
    base_root = tmp_path / ".processing"
    clock = _Clock()
    adoption, _ = _adoption(base_root, clock)
    me = adoption.me
    ledger = base_root / "_ledgers" / "20261101" / "take1.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b'{"blob": "x"}\n')
    leader = SimpleNamespace(
        membership=SimpleNamespace(
            coordinator=SimpleNamespace(is_leader=lambda: True), valid=lambda: True
        ),
        adoption=adoption,
    )
    retention = LedgerRetention(
        Layout(tmp_path / "incoming", base_root / OWNERS_DIR / me, tmp_path / "staging"),
        cast(Any, _Nfs()),
        0,
        lambda d, s: False,  # the leader knows nothing of the single replica's session
        clock=lambda: time.time() + DAY_S,
        share_root=base_root,
        others=lambda: Replicas.sweepable(cast(Any, leader)),
    )

    for _ in range(3):
        _touched(base_root)
        anyio.run(adoption.leftovers, View(()))
        anyio.run(retention.sweep)
        clock.now += single_mark.TOUCH_EVERY_S
        assert ledger.exists(), "a running single replica's ledger swept by the leader"

    single_mark.remove(base_root)  # it stopped cleanly
    anyio.run(adoption.leftovers, View(()))
    anyio.run(retention.sweep)
    assert not ledger.exists()
