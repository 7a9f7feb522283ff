"""Membership against a real Azurite: the member blob, its lease, validity, and the end of an
incarnation."""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobLeaseClient

from nfs_watcher_uploader.coord.constants import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from nfs_watcher_uploader.coord.errors import IncarnationLost
from nfs_watcher_uploader.coord.fields import plain
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.names import member_blob, new_incarnation
from nfs_watcher_uploader.coord.roster import Roster
from nfs_watcher_uploader.coord.validity import boottime
from tests.support.helpers import wait_for
from tests.support.http_relay import HttpRelay

from .conftest import Control, ManualClock


def _lease_state(control: Control, incarnation: str) -> tuple[str, str]:
    props = control.client().get_blob_client(member_blob(incarnation)).get_blob_properties()
    return plain(props.lease.status), plain(props.lease.state)


def test_joining_creates_the_member_blob_with_its_lease_held_under_the_incarnation(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False, host="pod-a", version="1.2.3")
    assert member.valid() and not member.steady()
    assert _lease_state(control, member.incarnation) == ("locked", "leased")
    record = Roster(control.client()).read().get(member.incarnation)
    assert (
        record is not None
        and record.live
        and (record.host, record.version)
        == (
            "pod-a",
            "1.2.3",
        )
    )
    # The lease id is the incarnation: the same id takes it again, any other does not.
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    BlobLeaseClient(blob, lease_id=member.incarnation).renew()
    with pytest.raises(Exception, match="LeaseAlreadyPresent"):
        BlobLeaseClient(blob, lease_id=new_incarnation()).acquire(15)


def test_validity_ends_fifteen_seconds_after_the_last_renew_was_sent(
    control: Control, join: Callable[..., Member]
) -> None:
    clock = ManualClock()
    session = requests.Session()
    # The answer of every request arrives 4 s after it was sent, by this clock.
    session.hooks["response"].append(lambda response, **_: clock.advance(4.0))
    member = join(start=False, client=control.client(session=session), clock=clock)
    # Joined: the acquire was sent at 1000.0 (the create's answer came at 1004.0, the acquire
    # was sent at 1004.0, answered at 1008.0).
    sent = clock.now - 4.0
    assert member.validity.remaining() == pytest.approx(sent + 15 - clock.now)
    clock.now = sent + 14.999
    assert member.valid()
    clock.now = sent + 15.0
    assert not member.valid()
    # A renew sent now (validity already over) makes it valid for 15 s from its send time.
    sent = clock.now
    assert member.renew_once()
    assert clock.now == sent + 4.0
    clock.now = sent + 14.999
    assert member.valid()
    clock.now = sent + 15.0
    assert not member.valid()


def test_validity_is_counted_on_a_clock_that_goes_on_while_the_system_is_suspended(
    join: Callable[..., Member],
) -> None:
    """A Jetson put to sleep mid-lease: CLOCK_MONOTONIC stops while the system is suspended,
    so a member counting on it would wake up believing that its lease, which ran out in
    storage while it slept, still holds, and claim beside the peer that adopted it. Validity
    is counted on CLOCK_BOOTTIME, which goes on through a suspend. (No test suspends the
    machine, where both clocks agree: this checks the clock a member is given.)"""
    member = join(start=False)
    clock = member.validity._clock  # pyright: ignore[reportPrivateUsage]
    assert clock is boottime
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= clock() <= time.clock_gettime(time.CLOCK_BOOTTIME)


def test_a_member_is_steady_only_after_a_whole_lease_period_without_a_gap(
    join: Callable[..., Member],
) -> None:
    clock = ManualClock()
    member = join(start=False, clock=clock)
    for _ in range(2):
        clock.advance(5.0)
        assert not member.steady()
        assert member.renew_once()
    clock.advance(4.999)
    assert not member.steady()
    clock.advance(0.001)  # valid without a gap since it joined, 15 s ago
    assert member.steady()
    clock.advance(15.0)  # a gap: validity lapsed
    assert not member.valid() and not member.steady()
    assert member.renew_once()
    assert member.valid() and not member.steady()


def test_a_member_that_lost_its_lease_never_takes_it_again(
    control: Control, join: Callable[..., Member]
) -> None:
    told: list[str] = []
    member = join(renew_every_s=0.2, retry_s=0.2, on_lost=told.append)
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    renews = member.renews
    wait_for(lambda: member.renews > renews + 1, what="the member to renew")
    BlobLeaseClient(blob).break_lease(lease_break_period=0)  # lost, as to an outage or a peer
    wait_for(lambda: member.lost is not None, timeout=10, what="the member to see its loss")
    assert "409" in (member.lost or "") and len(told) == 1
    assert not member.valid() and not member.steady()
    # Its thread ends: nothing more is sent, and the lease stays free.
    requests_sent = member.requests
    assert member._thread is not None
    member._thread.join(5)
    assert not member._thread.is_alive()
    assert member.requests == requests_sent and not member.renew_once()
    assert _lease_state(control, member.incarnation) == ("unlocked", "broken")
    with pytest.raises(RuntimeError, match="joins once"):
        member.join()
    with pytest.raises(RuntimeError, match="ended for good"):
        member.validity.renewed(0.0)


def test_a_member_blob_written_by_a_peer_ends_the_incarnation_at_the_next_renew(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False)
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    # A peer that knows the lease id (it is the blob's name) writes the blob.
    blob.set_blob_metadata({"adoptedby": new_incarnation()}, lease=member.incarnation)
    assert not member.renew_once()
    assert member.lost is not None and "written by a peer" in member.lost
    assert not member.valid()


def test_a_member_blob_deleted_by_hand_ends_the_incarnation_and_is_never_made_again(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False)
    blob = control.client().get_blob_client(member_blob(member.incarnation))
    blob.delete_blob(lease=member.incarnation)  # an operator "cleaning up" the control container
    assert not member.renew_once()
    assert member.lost is not None and not member.valid()
    assert not member.renew_once()  # a lost incarnation stays lost: it never creates it again
    assert not blob.exists()


def test_a_new_member_adopted_before_its_lease_was_taken_starts_over(
    control: Control,
) -> None:
    session = requests.Session()
    peer = control.client()

    def adopt_right_after_the_create(response: requests.Response, **_: Any) -> None:
        if response.request.method == "PUT" and "comp=" not in (response.request.url or ""):
            name = (response.request.url or "").split("/members/")[1].split("?")[0]
            peer.get_blob_client(member_blob(name)).set_blob_metadata(
                {"adoptedby": new_incarnation()}
            )

    session.hooks["response"].append(adopt_right_after_the_create)
    member = Member(control.client(session=session))
    with pytest.raises(IncarnationLost, match="before its lease was taken") as raised:
        member.join()
    assert raised.value.__suppress_context__
    assert not member.valid()
    with pytest.raises(RuntimeError, match="joins once"):
        member.join()


def test_a_replica_whose_nfs_scans_fail_sends_no_renew_and_stops_being_valid(
    join: Callable[..., Member],
) -> None:
    clock = ManualClock()
    healthy = threading.Event()
    member = join(start=False, clock=clock, healthy=healthy.is_set)
    sent = member.requests
    for _ in range(4):
        clock.advance(5.0)
        assert not member.renew_once()
    assert member.requests == sent and member.skipped == 4
    assert not member.valid() and member.lost is None
    healthy.set()  # the mount came back, and no peer adopted it meanwhile: it carries on
    assert member.renew_once() and member.valid()


def test_progress_is_written_only_when_it_changed_and_at_most_every_period(
    control: Control, join: Callable[..., Member]
) -> None:
    member = join(start=False, progress_every_s=0.0)
    member.set_progress({"run": {"uploaded": 1}})
    assert member.renew_once() and member.progress_writes == 1
    assert member.renew_once() and member.progress_writes == 1  # unchanged: not written
    member.set_progress({"run": {"uploaded": 2}})
    assert member.renew_once() and member.progress_writes == 2
    record = Roster(control.client()).read().get(member.incarnation)
    assert record is not None and record.progress == {"run": {"uploaded": 2}}
    assert member.renew_once() and member.lost is None  # its own writes are not a peer's

    slow = join(start=False, progress_every_s=3600.0)
    slow.set_progress({"run": {"uploaded": 1}})
    assert slow.renew_once() and slow.progress_writes == 1
    slow.set_progress({"run": {"uploaded": 2}})
    assert slow.renew_once() and slow.progress_writes == 1


def test_leaving_releases_the_lease_or_removes_the_blob(
    control: Control, join: Callable[..., Member]
) -> None:
    keeps = join(start=False)
    keeps.leave()
    assert _lease_state(control, keeps.incarnation) == ("unlocked", "available")
    assert not keeps.valid()
    done = join(start=False)
    done.leave(delete=True)
    assert Roster(control.client()).read().get(done.incarnation) is None


def test_a_renew_that_hangs_gives_up_within_its_timeout_and_the_next_goes_through(
    control: Control, relay: HttpRelay, join: Callable[..., Member]
) -> None:
    member = join(start=False, client=control.client(relay.url))
    relay.cut("blackhole")  # the link is dead: nothing comes back
    started = time.monotonic()
    assert not member.renew_once()
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + READ_TIMEOUT_S + 1
    assert member.renew_failures == 1 and member.lost is None
    assert member.last_error is not None and "renewing" in member.last_error
    relay.cut("pass")
    assert member.renew_once() and member.last_error is None


def test_a_health_check_that_raises_counts_as_unhealthy(join: Callable[..., Member]) -> None:
    def broken() -> bool:
        raise OSError("stat of the mount failed")

    member = join(start=False, healthy=broken)
    sent = member.requests
    assert not member.renew_once() and member.skipped == 1 and member.requests == sent
