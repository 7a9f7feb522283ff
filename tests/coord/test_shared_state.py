"""The shared session state against a real Azurite: compare-and-swap on the ETag, one winner
of many starts, the import of today's sessions.json, and what is read back checked."""

import json
import threading
from collections.abc import Callable

import pytest

from nfs_watcher_uploader.coord import transitions
from nfs_watcher_uploader.coord.constants import DAMAGED_PREFIX, STATE_BLOB
from nfs_watcher_uploader.coord.errors import StateTooNew
from nfs_watcher_uploader.coord.shared_state import SharedState
from nfs_watcher_uploader.coord.statedoc import EMPTY, StateDoc, parse
from nfs_watcher_uploader.errors import SessionConflict

from .conftest import Control
from .samples import TODAY

DATE = "20261204"


def _all_at_once(count: int, work: Callable[[int], None]) -> None:
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


@pytest.mark.parametrize("same_name", [False, True])
def test_twenty_concurrent_starts_across_replicas_give_exactly_one_winner(
    control: Control, same_name: bool
) -> None:
    replicas = [SharedState(control.client()) for _ in range(20)]
    won: list[str] = []
    refused: list[str] = []

    def start(i: int) -> None:
        name = "rec" if same_name else f"rec-{i}"
        try:
            replicas[i].update(lambda doc: transitions.start(doc, name, DATE, 1.0 + i))
            won.append(name)
        except SessionConflict as exc:
            refused.append(str(exc))

    _all_at_once(20, start)
    assert len(won) == 1 and len(refused) == 19
    assert all("already active" in r for r in refused)
    doc = SharedState(control.client()).read().doc
    assert [(s.name, s.state) for s in doc.sessions] == [(won[0], "active")]
    assert doc.generation == 1


def test_a_start_that_lost_the_race_is_checked_again_against_the_winner(
    control: Control,
) -> None:
    mine, other = SharedState(control.client()), SharedState(control.client())
    seen: list[StateDoc] = []

    def start_a(doc: StateDoc) -> StateDoc:
        seen.append(doc)
        if len(seen) == 1:  # another replica starts `b` between this read and this write
            other.update(lambda d: transitions.start(d, "b", DATE, 1.0))
        return transitions.start(doc, "a", DATE, 2.0)

    with pytest.raises(SessionConflict, match="'b' is already active"):
        mine.update(start_a)
    assert [s.active for s in seen] == [None, seen[1].get("b")]
    assert mine.conflicts == 1


def test_stop_then_start_elsewhere_sees_the_stop(control: Control) -> None:
    a, b = SharedState(control.client()), SharedState(control.client())
    a.update(lambda doc: transitions.start(doc, "one", DATE, 1.0))
    b.update(lambda doc: transitions.stop(doc, 2.0)[0])
    snap = a.update(lambda doc: transitions.start(doc, "two", DATE, 3.0))
    assert [(s.name, s.state) for s in snap.doc.sessions] == [
        ("one", "draining"),
        ("two", "active"),
    ]
    assert snap.doc.generation == 3


def test_a_change_that_changes_nothing_writes_nothing(control: Control) -> None:
    state = SharedState(control.client())
    assert state.update(lambda doc: transitions.stop(doc, 1.0)[0]).etag is None
    assert state.writes == 0


def test_the_first_replica_imports_sessions_json_and_only_once(control: Control) -> None:
    raw = json.dumps(TODAY).encode()
    replicas = [SharedState(control.client()) for _ in range(5)]
    imported: list[bool] = []
    _all_at_once(5, lambda i: imported.append(replicas[i].import_local(raw)))
    assert sorted(imported) == [False] * 4 + [True]
    # As it was, as the first write of the shared state (generation 1).
    expected = parse(raw).model_copy(update={"generation": 1})
    assert SharedState(control.client()).read().doc == expected
    # Later replicas, and a later sessions.json, never replace the shared state.
    assert not replicas[0].import_local(json.dumps({"version": 1, "sessions": []}).encode())
    assert SharedState(control.client()).read().doc == expected


def test_a_damaged_sessions_json_is_not_imported(control: Control) -> None:
    state = SharedState(control.client())
    assert not state.import_local(b'{"version": 1, "sessions": [{"name": ".."}]}')
    assert not state.import_local(None)
    assert state.read().etag is None


def test_a_damaged_state_is_kept_aside_and_replaced_at_the_next_change(
    control: Control,
) -> None:
    client = control.client()
    garbage = b'{"version": 1, "sessions": [{"name": "../../etc"}]}'
    client.upload_blob(STATE_BLOB, garbage)
    state = SharedState(control.client())
    snap = state.read()
    assert snap.damaged is not None and "session_name" in snap.damaged and snap.doc == EMPTY
    written = state.update(lambda doc: transitions.start(doc, "fresh", DATE, 1.0))
    assert written.doc.active is not None and written.doc.active.name == "fresh"
    kept = [b.name for b in client.list_blobs(name_starts_with=DAMAGED_PREFIX)]
    assert len(kept) == 1
    assert client.get_blob_client(kept[0]).download_blob().readall() == garbage


def test_a_state_written_by_a_newer_version_is_never_overwritten(control: Control) -> None:
    client = control.client()
    newer = b'{"version": 2, "sessions": {"a new": "shape"}}'
    client.upload_blob(STATE_BLOB, newer)
    state = SharedState(control.client())
    with pytest.raises(StateTooNew):
        state.update(lambda doc: transitions.start(doc, "x", DATE, 1.0))
    assert client.get_blob_client(STATE_BLOB).download_blob().readall() == newer


def test_a_state_blob_too_large_is_not_read_whole(control: Control) -> None:
    client = control.client()
    client.upload_blob(STATE_BLOB, b"[" * (3 * 1024 * 1024))
    snap = SharedState(control.client()).read()
    assert snap.damaged is not None and "more than 1048576 bytes" in snap.damaged
    assert len(snap.raw) == 1024 * 1024 + 1  # one ranged read, never the whole blob
