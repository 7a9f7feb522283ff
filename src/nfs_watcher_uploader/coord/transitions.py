"""The rules of sessions, as changes of the shared state document: the same rules as
`sessions.py` applies to its own file in single-replica mode.

Each function takes the document as it was read and returns the document to write, or raises
SessionConflict (HTTP 409) when the rule refuses. `shared_state.update` runs it again on the
document a concurrent writer left whenever its write loses the race, so a rule is always
checked against the state it changes: of 20 starts at once, across replicas, one succeeds.
"""

from nfs_watcher_uploader.constants import DRAINED_SESSIONS_KEPT
from nfs_watcher_uploader.coord.statedoc import StateDoc, StoredSession
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.items import SessionStateName, check_session_name


def _replace(doc: StateDoc, session: StoredSession) -> StateDoc:
    """`doc` with `session` in place of the one of its name (or added last), and only the
    newest DRAINED_SESSIONS_KEPT sessions that are not watched."""
    others = [s for s in doc.sessions if s.name != session.name]
    sessions = [*others, session]
    ended = [s.name for s in sessions if not s.watched]
    dropped = set(ended[: max(0, len(ended) - DRAINED_SESSIONS_KEPT)])
    return doc.model_copy(update={"sessions": tuple(s for s in sessions if s.name not in dropped)})


def start(doc: StateDoc, name: str, date_prefix: str, now: float) -> StateDoc:
    """Make `name` the active session (a name started again keeps its place, so what it
    still owns stays its)."""
    check_session_name(name)
    if (current := doc.active) is not None:
        raise SessionConflict(f"session {current.name!r} is already active; stop it first")
    old = doc.get(name)
    if old is not None and old.state == "draining":
        raise SessionConflict(f"session {name!r} is still draining; wait for it or pick a name")
    session = StoredSession(name=name, date_prefix=date_prefix, state="active", started_at=now)
    return _replace(doc, session)


def stop(doc: StateDoc, now: float) -> tuple[StateDoc, StoredSession | None]:
    """Stop the active session: it drains from now on. (doc, None) when none is active."""
    active = doc.active
    if active is None:
        return doc, None
    stopped = active.model_copy(update={"state": "draining", "stopped_at": now})
    return _replace(doc, stopped), stopped


def finish(
    doc: StateDoc, name: str, state: SessionStateName, drain_start: float | None
) -> StateDoc:
    """Record that session `name` drained (or timed out), if it is still draining the drain
    that the leader judged: one started again, stopped again or reopened since is not ended
    by a judgment of its earlier drain."""
    if state not in ("drained", "drain_timed_out"):
        raise ValueError(f"{state!r} is not an end")
    session = doc.get(name)
    if session is None or session.state != "draining" or session.drain_start != drain_start:
        raise SessionConflict(f"session {name!r} is not in the drain that was judged")
    return _replace(doc, session.model_copy(update={"state": state}))


def reopen(doc: StateDoc, name: str, now: float) -> StateDoc:
    """Parked files of an ended session were retried: it drains again, from `now`."""
    session = doc.get(name)
    if session is None or session.watched:
        return doc
    return _replace(doc, session.model_copy(update={"state": "draining", "redrained_at": now}))


def recovered(doc: StateDoc, name: str, date_prefix: str, now: float) -> StateDoc:
    """A session found only through files left on NFS: it drains."""
    if doc.get(name) is not None:
        return doc
    session = StoredSession(
        name=check_session_name(name),
        date_prefix=date_prefix,
        state="draining",
        started_at=now,
        stopped_at=now,
    )
    return _replace(doc, session)
