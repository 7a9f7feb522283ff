"""What Azurite does not model, checked against a real storage account when one is given
(AZURE_REAL_CONNECTION_STRING; skipped otherwise): the adoption write ending an expired lease
for good, the zombie's 409, and how long Azure makes another lease id wait after an expiry.

Azurite lets an expired lease be acquired at once; Azure may hold it for up to a minute. The
design never acquires a lease that is not its own (a new incarnation is a new blob), so that
delay only shows in this measurement."""

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobLeaseClient, ContainerClient

from nfs_watcher_uploader.coord.client import control_client, ensure_container
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.names import member_blob, new_incarnation
from nfs_watcher_uploader.coord.roster import Roster
from tests.support.helpers import wait_for

ENV = "AZURE_REAL_CONNECTION_STRING"
pytestmark = [
    pytest.mark.azure_real,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(ENV), reason=f"{ENV} is not set"),
]


@pytest.fixture
def real() -> Iterator[tuple[str, str]]:
    connection_string, name = os.environ[ENV], f"nwu-test-{uuid.uuid4().hex[:12]}-ctl"
    ensure_container(control_client(name, connection_string=connection_string))
    yield connection_string, name
    control_client(name, connection_string=connection_string).delete_container()


def _client(real: tuple[str, str]) -> ContainerClient:
    return control_client(real[1], connection_string=real[0])


def _lapsed(real: tuple[str, str], member: Member) -> None:
    wait_for(
        lambda: not Roster(_client(real)).read().get(member.incarnation).held,  # type: ignore[union-attr]
        timeout=60,
        interval=1,
        what="the lease to run out",
    )


def test_on_azure_an_expired_lease_nobody_wrote_is_renewed_by_its_member(
    real: tuple[str, str],
) -> None:
    slow = Member(_client(real))
    slow.join()
    _lapsed(real, slow)
    assert slow.renew_once() and slow.lost is None  # only slow: it carries on


def test_on_azure_the_adoption_write_ends_the_zombies_lease_with_a_409(
    real: tuple[str, str],
) -> None:
    zombie = Member(_client(real))
    zombie.join()
    _lapsed(real, zombie)
    roster = Roster(_client(real))
    dead = roster.read().get(zombie.incarnation)
    assert dead is not None and not dead.live
    adopted = roster.adopt(dead, new_incarnation())
    assert adopted is not None
    assert roster.adopt(dead, new_incarnation()) is None  # the loser: 412 on the old ETag
    assert not zombie.renew_once()
    print(f"zombie's renew after the adoption: {zombie.lost}")
    assert zombie.lost is not None and "409" in zombie.lost
    assert roster.remove(adopted)


def test_on_azure_another_lease_id_waits_after_an_expiry(real: tuple[str, str]) -> None:
    member = Member(_client(real))
    member.join()
    _lapsed(real, member)
    blob = _client(real).get_blob_client(member_blob(member.incarnation))
    refusals: list[int] = []

    def acquired() -> bool:
        try:
            BlobLeaseClient(blob, lease_id=str(uuid.uuid4())).acquire(15)
        except HttpResponseError as exc:
            assert exc.status_code == 409, exc
            refusals.append(exc.status_code)
            return False
        return True

    started = time.monotonic()
    wait_for(acquired, timeout=90, interval=1, what="another lease id to be let in")
    waited = time.monotonic() - started
    print(f"acquire by another id after expiry: {waited:.1f} s ({len(refusals)} refusals)")
