"""The session rules as changes of the shared document: the same rules as single-replica mode."""

import pytest

from nfs_watcher_uploader.coord import transitions as t
from nfs_watcher_uploader.coord.statedoc import EMPTY
from nfs_watcher_uploader.errors import SessionConflict


def test_a_second_start_is_refused_while_a_session_is_active() -> None:
    doc = t.start(EMPTY, "a", "20261204", 1.0)
    with pytest.raises(SessionConflict, match="already active"):
        t.start(doc, "b", "20261204", 2.0)


def test_a_draining_name_cannot_be_started_again_until_it_drained() -> None:
    doc, stopped = t.stop(t.start(EMPTY, "a", "20261204", 1.0), 2.0)
    assert stopped is not None and stopped.state == "draining" and stopped.stopped_at == 2.0
    with pytest.raises(SessionConflict, match="still draining"):
        t.start(doc, "a", "20261205", 3.0)
    doc = t.finish(doc, "a", "drained", 2.0)
    again = t.start(doc, "a", "20261205", 4.0).get("a")
    assert again is not None and (again.state, again.date_prefix, again.stopped_at) == (
        "active",
        "20261205",
        None,
    )


def test_a_drain_judged_before_the_session_was_restarted_does_not_end_it() -> None:
    doc, _ = t.stop(t.start(EMPTY, "a", "20261204", 1.0), 2.0)
    doc = t.finish(doc, "a", "drained", 2.0)
    doc, _ = t.stop(t.start(doc, "a", "20261204", 3.0), 4.0)
    with pytest.raises(SessionConflict, match="not in the drain"):
        t.finish(doc, "a", "drained", 2.0)  # the leader judged the first drain
    assert t.finish(doc, "a", "drained", 4.0).get("a").state == "drained"  # type: ignore[union-attr]


def test_a_reopened_session_drains_from_the_retry() -> None:
    doc, _ = t.stop(t.start(EMPTY, "a", "20261204", 1.0), 2.0)
    doc = t.reopen(t.finish(doc, "a", "drain_timed_out", 2.0), "a", 9.0)
    session = doc.get("a")
    assert session is not None and session.state == "draining" and session.drain_start == 9.0


def test_stop_without_an_active_session_changes_nothing() -> None:
    assert t.stop(EMPTY, 1.0) == (EMPTY, None)


def test_only_the_newest_ended_sessions_are_kept() -> None:
    doc = EMPTY
    for i in range(205):
        doc, _ = t.stop(t.start(doc, f"s{i}", "20261204", float(i)), float(i))
        doc = t.finish(doc, f"s{i}", "drained", float(i))
    names = [s.name for s in doc.sessions]
    assert len(names) == 200 and names[0] == "s5" and names[-1] == "s204"


def test_a_session_recovered_from_nfs_drains_and_a_known_one_is_left_alone() -> None:
    doc = t.recovered(EMPTY, "found", "20261203", 5.0)
    found = doc.get("found")
    assert found is not None and found.state == "draining"
    assert t.recovered(doc, "found", "20261204", 6.0) == doc


def test_an_update_after_a_late_write_is_kept_until_the_end_that_reports_it() -> None:
    doc, _ = t.stop(t.start(EMPTY, "a", "20261204", 1.0), 2.0)
    doc = t.reopen(t.finish(doc, "a", "drained", 2.0), "a", 5.0, update=True)
    assert doc.get("a").updated  # type: ignore[union-attr]
    doc = t.reopen(doc, "a", 6.0)  # a retry of parked files meanwhile keeps it an update
    assert doc.get("a").updated  # type: ignore[union-attr]
    assert not t.finish(doc, "a", "drained", 5.0).get("a").updated  # type: ignore[union-attr]


def test_the_generation_of_an_end_is_kept_so_the_next_end_is_newer_whatever_the_clock() -> None:
    """Two leaders with different clocks: the end judged later must have the higher generation
    (cloud/reports never writes an older end's manifest over a newer one)."""
    doc, _ = t.stop(t.start(EMPTY, "a", "20261204", 1.0), 2.0)
    stored = doc.get("a")
    assert stored is not None
    ahead = 5_000_000_000_000_000  # a leader whose clock is far ahead
    report = t.report_due("a", "drained", stored, "0f1e", 3.0, generation=ahead)
    doc = t.finish(doc, "a", "drained", 2.0, report)
    ended = doc.get("a")
    assert ended is not None and ended.end_generation == ahead
    assert doc.reports[0].generation == ahead
    doc = t.reopen(doc, "a", 9.0, update=True)
    assert doc.get("a").end_generation == ahead  # type: ignore[union-attr]
