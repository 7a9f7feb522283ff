"""The roster against a real Azurite: live and dead members by their lease, one adopter per
dead member, the leader, and removal only of what was seen."""

import math
import threading
import time
from collections.abc import Callable

import pytest
from azure.storage.blob import BlobLeaseClient

from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.names import member_blob, new_incarnation
from nfs_watcher_uploader.coord.roster import MemberRecord, Roster
from tests.support.helpers import wait_for

from .conftest import Control, ManualClock


def _break(control: Control, member: Member) -> None:
    """End a member's lease at once, as if it had lapsed (Azure lists it unlocked)."""
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    BlobLeaseClient(blob).break_lease(lease_break_period=0)


def _join_in_a_second_of_its_own(join: Callable[..., Member]) -> Member:
    member = join(start=False)
    joined = time.time()
    wait_for(lambda: time.time() >= math.floor(joined) + 1, what="the next second")
    return member


def _race_to_adopt(control: Control, record: MemberRecord, peers: int) -> list[MemberRecord]:
    """`peers` replicas, each with its own client, adopt `record` at the same moment."""
    rosters = [Roster(control.client()) for _ in range(peers)]
    start = threading.Barrier(peers)
    won: list[MemberRecord] = []

    def adopt(roster: Roster) -> None:
        start.wait()
        adopted = roster.adopt(record, new_incarnation())
        if adopted is not None:
            won.append(adopted)

    threads = [threading.Thread(target=adopt, args=(r,)) for r in rosters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return won


@pytest.mark.slow
def test_a_member_whose_lease_lapsed_is_adopted_by_exactly_one_peer(
    control: Control, join: Callable[..., Member]
) -> None:
    """The one test that waits for a real lease to run out (Azure's shortest is 15 s)."""
    paused = threading.Event()
    paused.set()
    victim = join(renew_every_s=0.5, retry_s=0.5, healthy=lambda: not paused.is_set())
    paused.clear()
    wait_for(lambda: victim.renews > 0, what="a renew")
    paused.set()  # as a SIGSTOP would: no more renews, nothing released
    roster = Roster(control.client())
    wait_for(lambda: not roster.read().members[0].held, timeout=25, interval=0.5, what="the lapse")
    dead = roster.read().get(victim.incarnation)
    assert dead is not None and not dead.live
    assert [o.incarnation for o in roster.read().orphans(new_incarnation())] == [victim.incarnation]
    won = _race_to_adopt(control, dead, peers=6)
    assert len(won) == 1
    adopted = roster.read().get(victim.incarnation)
    assert adopted is not None and adopted.adopted_by == won[0].adopted_by
    # The paused member resumes: its first renew is refused (the blob was written since the
    # lease ran out), and it never takes the lease again.
    paused.clear()
    wait_for(lambda: victim.lost is not None, timeout=10, what="the zombie to see its loss")
    assert "409" in (victim.lost or "") and not victim.valid()
    latest = roster.read().get(victim.incarnation)
    assert latest is not None and not latest.held and latest.etag == adopted.etag


def test_a_broken_lease_is_dead_and_adopted_once_of_twenty_tries(
    control: Control, join: Callable[..., Member]
) -> None:
    victim = join(start=False)
    _break(control, victim)
    dead = Roster(control.client()).read().get(victim.incarnation)
    assert dead is not None and not dead.held
    assert len(_race_to_adopt(control, dead, peers=20)) == 1
    assert not victim.renew_once() and victim.lost is not None


def test_an_adoption_loses_to_a_member_that_renewed_since_the_listing(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False)
    _break(control, member)
    listed = Roster(control.client()).read().get(member.incarnation)
    assert listed is not None and not listed.held
    # It takes its lease back before anyone adopts (Azure allows its own id on a broken lease).
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    BlobLeaseClient(blob, lease_id=member.incarnation).acquire(15)
    assert Roster(control.client()).adopt(listed, new_incarnation()) is None
    assert Roster(control.client()).read().get(member.incarnation).live  # type: ignore[union-attr]


def test_only_a_steady_member_adopts(control: Control, join: Callable[..., Member]) -> None:
    clock = ManualClock()
    me = join(start=False, clock=clock)
    victim = join(start=False)
    _break(control, victim)
    coordinator = Coordinator(me, control.client)
    coordinator.iteration()
    assert [o.incarnation for o in coordinator.view.orphans(me.incarnation)] == [  # type: ignore[union-attr]
        victim.incarnation
    ]
    assert coordinator.adopt() == []  # joined just now: not steady
    for _ in range(3):
        clock.advance(5.0)
        assert me.renew_once()
    assert me.steady()
    won = coordinator.adopt()
    assert [w.incarnation for w in won] == [victim.incarnation]
    coordinator.iteration()
    assert coordinator.view.adopted_by(me.incarnation)[0].incarnation == victim.incarnation  # type: ignore[union-attr]
    assert coordinator.view.orphans(me.incarnation) == []  # type: ignore[union-attr]


def test_the_leader_is_the_oldest_live_member_and_the_next_takes_over(
    control: Control, join: Callable[..., Member]
) -> None:
    # Storage lists creation times to the second (members of one second are ordered by name).
    first, second, third = (_join_in_a_second_of_its_own(join) for _ in range(3))
    coordinators = [Coordinator(m, control.client) for m in (first, second, third)]
    for c in coordinators:
        c.iteration()
    assert [c.is_leader() for c in coordinators] == [True, False, False]
    _break(control, first)
    for c in coordinators:
        c.iteration()
    assert [c.is_leader() for c in coordinators] == [False, True, False]
    assert coordinators[1].view.leader() == second.incarnation  # type: ignore[union-attr]


def test_a_member_is_removed_only_if_it_is_still_as_it_was_seen(
    control: Control, join: Callable[..., Member]
) -> None:
    victim = join(start=False)
    _break(control, victim)
    roster = Roster(control.client())
    seen = roster.read().get(victim.incarnation)
    assert seen is not None
    adopted = roster.adopt(seen, new_incarnation())
    assert adopted is not None
    assert not roster.remove(seen)  # changed since it was seen (adopted)
    assert roster.remove(adopted)
    assert roster.read().get(victim.incarnation) is None
    assert not roster.remove(adopted)  # gone already
    alive = join(start=False)
    live = roster.read().get(alive.incarnation)
    with pytest.raises(ValueError, match="live member"):
        roster.remove(live)  # type: ignore[arg-type]


def test_blobs_that_are_not_members_and_bad_metadata_never_break_the_roster(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False)
    client = control.client()
    client.upload_blob("members/not-a-uuid", b"")
    client.upload_blob(f"members/{new_incarnation().upper()}", b"")
    client.upload_blob("elsewhere/x", b"")
    odd = new_incarnation()
    client.upload_blob(
        member_blob(odd), b"", metadata={"progress": '{"s": {"n": -1}}', "adoptedby": "me!"}
    )
    view = Roster(control.client()).read()
    assert view.ignored == 2
    assert [m.incarnation for m in view.live()] == [member.incarnation]
    bad = view.get(odd)
    assert bad is not None and bad.progress == {} and bad.adopted_by is None
    assert bad.problem is not None and "progress" in bad.problem and "adopter" in bad.problem
    assert bad in view.orphans(member.incarnation)


@pytest.mark.adversarial
def test_a_dead_members_blob_leased_by_hand_for_good_is_dead_and_adopted(
    control: Control, join: Callable[..., Member]
) -> None:
    """Review of issue 24, finding 2. A lease taken by hand on a member blob (Azure Storage
    Explorer's "Acquire Lease" takes an infinite one) made that member live for good: its
    tree was never adopted, so the files it had claimed were never uploaded, and as the
    oldest member it led for good, so no drain ever ended. Members hold only leases of
    LEASE_S seconds; a member with any other lease is not one of ours alive."""
    victim = _join_in_a_second_of_its_own(join)
    clock = ManualClock()
    me = join(start=False, clock=clock)
    _break(control, victim)
    blob = control.client().get_blob_client(member_blob(victim.incarnation))
    BlobLeaseClient(blob).acquire(lease_duration=-1)

    coordinator = Coordinator(me, control.client)
    coordinator.iteration()
    view = coordinator.view
    assert view is not None
    assert view.leader() == me.incarnation
    assert [o.incarnation for o in view.orphans(me.incarnation)] == [victim.incarnation]
    for _ in range(3):
        clock.advance(5.0)
        assert me.renew_once()
    assert [w.incarnation for w in coordinator.adopt()] == [victim.incarnation]
