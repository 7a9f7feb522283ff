"""What a replica does with the shared state it reads back, when someone else put it there:
a state of an older generation (a backup restored, a copy made before the last changes) is
not taken for the newest one, and the next change writes over it from the state known."""

from collections.abc import Callable

import pytest

from nfs_watcher_uploader.coord import transitions
from nfs_watcher_uploader.coord.constants import STATE_BLOB
from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.statedoc import parse

from .conftest import Control

DATE = "20261204"


@pytest.mark.adversarial
def test_a_state_of_an_older_generation_put_back_by_hand_never_replaces_the_state_known(
    control: Control, join: Callable[..., Member]
) -> None:
    """Review of issue 24, finding 1. A valid state of a lower generation written over the
    blob (a restored backup, an operator's copy) was taken as the state: a session stopped
    since was active again, one started since forgotten, and generations went back, so a
    member's `quiet` of a pass made before a new drain could count for it (drain_gen is
    compared with generations seen before the rollback)."""
    coordinator = Coordinator(join(start=False), control.client)
    coordinator.iteration()
    coordinator.change(lambda doc: transitions.start(doc, "first", DATE, 1.0))
    client = control.client()
    older = client.get_blob_client(STATE_BLOB).download_blob().readall()
    coordinator.change(lambda doc: transitions.stop(doc, 2.0)[0])
    coordinator.change(lambda doc: transitions.start(doc, "second", DATE, 3.0))
    coordinator.iteration()
    known = coordinator.snapshot
    assert known is not None and known.doc.active is not None
    assert known.doc.active.name == "second"

    client.upload_blob(STATE_BLOB, older, overwrite=True)
    coordinator.iteration()

    kept = coordinator.snapshot
    assert kept is not None and kept.doc == known.doc  # not the older one
    assert coordinator.state_problem is not None and "generation" in coordinator.state_problem
    assert coordinator.repair()
    written = parse(client.get_blob_client(STATE_BLOB).download_blob().readall())
    assert written.generation > known.doc.generation
    assert written.active is not None and written.active.name == "second"
    first = written.get("first")
    assert first is not None and first.state == "draining"
    coordinator.iteration()
    assert coordinator.state_problem is None
