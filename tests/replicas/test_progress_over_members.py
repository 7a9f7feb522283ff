"""What any replica shows of a session's progress, summed over the members' published
counters (replicas/progress.summed), one rule at a time."""

from types import SimpleNamespace
from typing import Any, cast

from nfs_watcher_uploader.coord.names import new_incarnation
from nfs_watcher_uploader.coord.roster import MemberRecord, View
from nfs_watcher_uploader.replicas import progress


def _member(held: bool, counters: dict[str, int]) -> MemberRecord:
    return MemberRecord(new_incarnation(), '"e"', held, 0.0, progress={"s": counters})


def test_a_dead_members_files_in_flight_count_as_left_and_its_rate_as_nothing() -> None:
    """A member that died mid-upload: its adopter sends its files again from the start, so
    all their bytes are still to send, and it sends nothing any more."""
    me = new_incarnation()
    flight = {progress.FLIGHT_DONE: 300, progress.FLIGHT_LEFT: 700, progress.RATE: 50}
    live, dead = _member(True, dict(flight)), _member(False, dict(flight))

    summed = progress.summed(View((live, dead)), me, {}, "s")

    assert summed[progress.FLIGHT_DONE] == 300
    assert summed[progress.FLIGHT_LEFT] == 700 + 1000
    assert summed[progress.RATE] == 50


def test_counters_published_with_files_in_flight_leave_out_what_is_zero() -> None:
    """Only what is there travels in the member blob (its metadata is small and billed)."""
    session = SimpleNamespace(
        watched=True,
        started_at=1.0,
        name="s",
        quiet_gen=0,
        pending=(),
        parked={},
        files_seen=2,
        bytes_seen=10,
        uploaded=1,
        bytes_uploaded=4,
        dismissed=0,
        renamed=0,
        late_writes=0,
        count=lambda state: 0,
    )
    flight = {progress.FLIGHT_DONE: 0, progress.FLIGHT_LEFT: 6, progress.RATE: 0}

    found = progress.published([cast(Any, session)], lambda s: flight)

    assert found == {
        "s": {
            "files_seen": 2,
            "bytes_seen": 10,
            "uploaded": 1,
            "bytes_uploaded": 4,
            progress.FLIGHT_LEFT: 6,
        }
    }
