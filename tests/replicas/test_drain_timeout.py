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


@pytest.mark.adversarial
@pytest.mark.xfail(
    strict=True,
    reason=(
        "design: the timeout is measured on wall clocks of two replicas (stopped_at by the one "
        "that took the stop, now by the leader). A fix: count it from when this leader first "
        "saw the drain of that drain_gen (monotonic, as _due_since does for reports), so skew "
        "only delays a timeout, by at most one period per leader change; to be chosen with "
        "what the status page shows of a drain's time left"
    ),
)
def test_a_drain_stopped_by_a_replica_whose_clock_is_behind_does_not_time_out_at_once(
    tmp_path: Path,
) -> None:
    """Review of issue 24, finding 5. The drain timeout compared the leader's wall clock with
    `stopped_at`, written by whichever replica took the stop, with its own clock: a replica an
    hour behind (a Jetson board without a battery-backed clock, before NTP) made the leader end
    a just-stopped session as drain_timed_out at its first look, with its files still coming
    in; a leader behind the others never timed a drain out."""
    settings = SimpleNamespace(
        drain_timeout_s=TIMEOUT_S,
        include=(),
        exclude=(),
        file_extensions=(),
        exclude_defaults=True,
        nfs_incoming_dir=tmp_path / "incoming",
    )
    membership = SimpleNamespace(incarnation=new_incarnation(), valid=lambda: True)
    leader_now = 1_800_000_000.0
    leader = Leader(
        cast(Any, settings),
        cast(Any, membership),
        cast(Any, SimpleNamespace(by_name={})),
        cast(Any, SimpleNamespace()),
        cast(Any, SimpleNamespace(nfs=SimpleNamespace(timeout=5.0))),
        tmp_path,
        clock=lambda: leader_now,
    )
    ended: list[str] = []

    async def end(stored: StoredSession, state: str) -> None:
        ended.append(state)

    leader._end = end  # type: ignore[method-assign]
    stopped = StoredSession(
        name="take1",
        date_prefix="20261204",
        state="draining",
        started_at=leader_now - 3600 - 60,
        stopped_at=leader_now - 3600,  # just now, by a replica an hour behind
        drain_gen=2,
    )

    anyio.run(leader._judge, View(()), stopped)  # pyright: ignore[reportPrivateUsage]

    assert ended == [], "a drain stopped a moment ago timed out at the leader's first look"
