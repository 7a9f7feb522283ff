"""The shared state document and member progress are read as untrusted input: size, depth,
shape and meaning are checked, and today's sessions.json reads as it is."""

import json

import pytest

from nfs_watcher_uploader.coord import progress
from nfs_watcher_uploader.coord.constants import COUNTER_MAX
from nfs_watcher_uploader.coord.errors import StateTooNew
from nfs_watcher_uploader.coord.statedoc import EMPTY, dump, parse
from nfs_watcher_uploader.coord.untrusted import load_json

from .samples import TODAY


def _session(**changes: object) -> dict[str, object]:
    return {**TODAY["sessions"][1], **changes}  # type: ignore[dict-item]


def test_todays_sessions_json_reads_as_it_is_and_writes_back_the_same() -> None:
    doc = parse(json.dumps(TODAY, indent=1).encode())
    assert doc.generation == 0 and doc.active is not None and doc.active.name == "run-2"
    assert parse(dump(doc)) == doc
    written = json.loads(dump(doc))["sessions"]
    # Every field of today's file is written back as it was (the shared state adds drain_gen).
    assert [{k: s[k] for k in t} for s, t in zip(written, TODAY["sessions"], strict=True)] == (
        TODAY["sessions"]
    )


@pytest.mark.parametrize(
    ("sessions", "why"),
    [
        ([_session(name="..")], "session_name"),
        ([_session(name="a/b")], "session_name"),
        ([_session(date_prefix="2026-12-04")], "YYYYMMDD"),
        ([_session(state="paused")], "state"),
        ([_session(started_at="1764810001")], "valid number"),
        ([_session(started_at=-1.0)], "greater than or equal"),
        ([_session(), _session()], "twice"),
    ],
)
def test_a_state_that_breaks_a_rule_is_refused_naming_it(
    sessions: list[dict[str, object]], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        parse(json.dumps({"version": 1, "sessions": sessions}).encode())


def test_numbers_json_allows_but_time_does_not_are_refused() -> None:
    raw = json.dumps({"version": 1, "sessions": [_session(started_at=float("nan"))]})
    with pytest.raises(ValueError, match="finite"):
        parse(raw.encode())


def test_a_huge_or_deeply_nested_state_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(ValueError, match="at most"):
        parse(b" " * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="deeper"):
        parse(b"[" * 100_000 + b"]" * 100_000)
    deep_in_a_string = json.dumps({"version": 1, "sessions": [], "x": "[" * 1000})
    assert parse(deep_in_a_string.encode()) == EMPTY


def test_a_state_of_a_newer_version_is_too_new_not_damaged() -> None:
    with pytest.raises(StateTooNew):
        parse(b'{"version": 2, "sessions": "whatever it is now"}')
    with pytest.raises(ValueError, match="version"):
        parse(b'{"version": "1", "sessions": []}')


def test_of_two_active_sessions_the_newer_stays_active_and_the_other_drains() -> None:
    older = _session(name="old", started_at=10.0)
    newer = _session(name="new", started_at=20.0)
    doc = parse(json.dumps({"version": 1, "sessions": [newer, older]}).encode())
    states = {s.name: (s.state, s.stopped_at) for s in doc.sessions}
    assert states == {"new": ("active", None), "old": ("draining", 10.0)}


def test_unknown_fields_of_a_newer_replica_are_ignored_not_fatal() -> None:
    raw = json.dumps({"version": 1, "later": {}, "sessions": [_session(owner="x")]})
    assert parse(raw.encode()).sessions[0].name == "run-2"


def test_progress_round_trips_and_a_bad_one_is_refused() -> None:
    counters = {"run-2": {"uploaded": 3, "bytes_uploaded": 1 << 40}}
    text, left_out = progress.encode(counters)
    assert left_out == 0 and progress.parse(text) == counters
    for bad in ('{"..": {}}', '{"s": {"Up": 1}}', '{"s": {"n": -1}}', '{"s": {"n": true}}',
                '{"s": {"n": 1.5}}', '{"s": [1]}', '[]', '{"s": {"n": {"deep": 1}}}'):  # fmt: skip
        with pytest.raises(ValueError):
            progress.parse(bad)


def test_progress_too_big_for_metadata_leaves_out_the_last_sessions() -> None:
    many = {f"session-{i:04d}": {"uploaded": i, "bytes_uploaded": i << 30} for i in range(500)}
    text, left_out = progress.encode(many)
    assert len(text) <= 4096 and left_out > 0
    assert "session-0000" in progress.parse(text)


def test_json_depth_is_counted_outside_strings_only() -> None:
    assert load_json(b'{"a": "[[[[{{{{"}', 100, 1) == {"a": "[[[[{{{{"}
    assert load_json(b'{"a": "\\"[[["}', 100, 1) == {"a": '"[[['}
    with pytest.raises(ValueError, match="deeper"):
        load_json(b'{"a": [[1]]}', 100, 2)


def test_counters_of_a_session_add_up_over_members() -> None:
    members = [
        {"s": {"uploaded": 2, "renamed": 1}, "t": {"uploaded": 9}},
        {"s": {"uploaded": 3}},
        {},
    ]
    assert progress.total(members, "s") == {"uploaded": 5, "renamed": 1}
    assert progress.total(members, "none") == {}


@pytest.mark.adversarial
@pytest.mark.parametrize("field", ["generation", "drain_gen"])
def test_a_state_whose_generation_no_member_could_publish_as_quiet_is_refused(
    field: str,
) -> None:
    """Review of issue 24, finding 6. A state put in place by hand with a generation of 2^53
    or more was read as a valid state; every member then published `quiet` counters of that
    generation, which peers refuse (progress counters stop below 2^53), so the leader saw no
    member quiet and every drain waited for its timeout. A generation a member cannot publish
    makes the state unusable (set aside and written back from the state known)."""
    session = {
        "name": "s",
        "date_prefix": "20261204",
        "state": "draining",
        "started_at": 1.0,
        "stopped_at": 2.0,
        "drain_gen": 3,
    }
    doc = {"version": 1, "generation": 5, "sessions": [session]}
    if field == "generation":
        doc["generation"] = COUNTER_MAX
    else:
        session["drain_gen"] = COUNTER_MAX
    with pytest.raises(ValueError):
        parse(json.dumps(doc).encode())
