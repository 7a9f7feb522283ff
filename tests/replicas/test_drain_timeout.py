"""The leader's drain timeout (replicas/leader), one judgement at a time, with stand-ins for
the service's parts: the clocks of other replicas never end a drain early."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.coord.roster import View
from nfs_watcher_uploader.coord.statedoc import StoredSession
from nfs_watcher_uploader.replicas.leader import Leader

TIMEOUT_S = 600.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _draining(stopped_at: float) -> StoredSession:
    """A session stopped at `stopped_at` (by some replica's wall clock), a minute after its
    start."""
    return StoredSession(
        name="take1",
        date_prefix="20261204",
        state="draining",
        started_at=stopped_at - 60,
        stopped_at=stopped_at,
        drain_gen=2,
    )


def _leader(tmp_path: Path, leader_now: float) -> tuple[Leader, list[str], _Clock]:
    """A leader whose wall clock says `leader_now` and whose monotonic clock the test moves;
    what it ends is listed."""
    settings = SimpleNamespace(
        drain_timeout_s=TIMEOUT_S,
        include=(),
        exclude=(),
        file_extensions=(),
        exclude_defaults=True,
        nfs_incoming_dir=tmp_path / "incoming",
    )
    membership = SimpleNamespace(incarnation=new_incarnation(), valid=lambda: True)
    monotonic = _Clock()
    leader = Leader(
        cast(Any, settings),
        cast(Any, membership),
        cast(Any, SimpleNamespace(by_name={})),
        cast(Any, SimpleNamespace()),
        cast(Any, SimpleNamespace(nfs=SimpleNamespace(timeout=5.0))),
        tmp_path,
        clock=lambda: leader_now,
        monotonic=monotonic,
    )
    ended: list[str] = []

    async def end(stored: StoredSession, state: str) -> None:
        ended.append(state)

    leader._end = end  # type: ignore[method-assign]
    return leader, ended, monotonic


@pytest.mark.adversarial
def test_a_drain_stopped_by_a_replica_whose_clock_is_behind_does_not_time_out_at_once(
    tmp_path: Path,
) -> None:
    """Review of issue 24, finding 5. The drain timeout compared the leader's wall clock with
    `stopped_at`, written by whichever replica took the stop, with its own clock: a replica an
    hour behind (a Jetson board without a battery-backed clock, before NTP) made the leader end
    a just-stopped session as drain_timed_out at its first look, with its files still coming
    in; a leader behind the others never timed a drain out."""
    leader_now = 1_800_000_000.0
    leader, ended, _ = _leader(tmp_path, leader_now)
    stopped = _draining(leader_now - 3600)  # just now, by a replica an hour behind

    anyio.run(leader._judge, View(()), stopped)  # pyright: ignore[reportPrivateUsage]

    assert ended == [], "a drain stopped a moment ago timed out at the leader's first look"


@pytest.mark.adversarial
def test_a_drain_stopped_by_a_replica_whose_clock_is_ahead_still_times_out(
    tmp_path: Path,
) -> None:
    """The other side of the same finding: a stop taken by a replica an hour ahead of the
    leader (stopped_at in the leader's future) still ends as drain_timed_out once the leader
    has watched it drain for APP_DRAIN_TIMEOUT_S, not an hour later."""
    leader_now = 1_800_000_000.0
    leader, ended, monotonic = _leader(tmp_path, leader_now)
    stopped = _draining(leader_now + 3600)  # just now, by a replica an hour ahead

    anyio.run(leader._judge, View(()), stopped)  # pyright: ignore[reportPrivateUsage]
    assert ended == [], "timed out before any time had passed"
    monotonic.now += TIMEOUT_S - 1
    anyio.run(leader._judge, View(()), stopped)  # pyright: ignore[reportPrivateUsage]
    assert ended == [], "timed out before APP_DRAIN_TIMEOUT_S"
    monotonic.now += 2
    anyio.run(leader._judge, View(()), stopped)  # pyright: ignore[reportPrivateUsage]

    assert ended == ["drain_timed_out"]


async def _nothing(*args: object) -> None:
    return None


@pytest.mark.adversarial
def test_a_drain_still_times_out_when_the_leader_misses_a_look_now_and_then(
    tmp_path: Path,
) -> None:
    """The leader counts the timeout from when it first saw the drain. A leader that is not the
    leader for one pass now and then (a renewal late by a moment makes its lease invalid, and
    the next one valid again) forgot when that was, started counting again at its next look,
    and a drain that a stuck member kept from ending never timed out. What a process has seen
    on its own monotonic clock stays true while it is not the leader."""
    leader_now = 1_800_000_000.0
    leader, ended, monotonic = _leader(tmp_path, leader_now)
    stopped = _draining(leader_now)
    leading = [True]
    coordinator = SimpleNamespace(view=View(()), is_leader=lambda: leading[0], state_problem=None)
    leader.membership = cast(
        Any,
        SimpleNamespace(
            incarnation=leader.me,
            valid=lambda: True,
            coordinator=coordinator,
            latest=lambda: SimpleNamespace(sessions=[stopped]),
        ),
    )
    leader.adoption = cast(Any, SimpleNamespace(leftovers=_nothing))
    leader._remake_due = _nothing  # type: ignore[method-assign]

    for look in range(20):  # five timeouts, one look in two missed
        leading[0] = look % 2 == 0
        anyio.run(leader.iteration)
        monotonic.now += TIMEOUT_S / 4

    assert "drain_timed_out" in ended, "a drain never timed out: its start was forgotten"
