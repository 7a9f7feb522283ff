"""The rules of sessions, as changes of the shared state document: the same rules as
`sessions.py` applies to its own file in single-replica mode.

Each function takes the document as it was read and returns the document to write, or raises
SessionConflict (HTTP 409) when the rule refuses. `shared_state.update` runs it again on the
document a concurrent writer left whenever its write loses the race, so a rule is always
checked against the state it changes: of 20 starts at once, across replicas, one succeeds.
A change that begins a drain (stop, reopen, recovered) marks it with the generation being
written (`drain_gen`).
"""

from nfs_watcher_uploader.constants import DRAINED_SESSIONS_KEPT
from nfs_watcher_uploader.coord.statedoc import (
    BandwidthOverride,
    EndedName,
    ReportDue,
    StateDoc,
    StoredSession,
)
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


def _next(doc: StateDoc) -> int:
    """The generation the write of a change of `doc` will have (shared_state raises it)."""
    return doc.generation + 1


def stop(doc: StateDoc, now: float) -> tuple[StateDoc, StoredSession | None]:
    """Stop the active session: it drains from now on. (doc, None) when none is active."""
    active = doc.active
    if active is None:
        return doc, None
    update = {"state": "draining", "stopped_at": now, "drain_gen": _next(doc)}
    stopped = active.model_copy(update=update)
    return _replace(doc, stopped), stopped


def finish(
    doc: StateDoc,
    name: str,
    state: SessionStateName,
    drain_start: float | None,
    report: ReportDue | None = None,
) -> StateDoc:
    """Record that session `name` drained (or timed out), if it is still draining the drain
    that the leader judged: one started again, stopped again or reopened since is not ended
    by a judgment of its earlier drain. `report`, when given, is kept as due (see statedoc)
    in the same write, so that no end is ever recorded without its report."""
    if state not in ("drained", "drain_timed_out"):
        raise ValueError(f"{state!r} is not an end")
    session = doc.get(name)
    if session is None or session.state != "draining" or session.drain_start != drain_start:
        raise SessionConflict(f"session {name!r} is not in the drain that was judged")
    change: dict[str, object] = {"state": state, "updated": False}
    if report is not None:
        change["end_generation"] = max(session.end_generation, report.generation)
    doc = _replace(doc, session.model_copy(update=change))
    if report is not None and all(r.id != report.id for r in doc.reports):
        doc = doc.model_copy(update={"reports": (*doc.reports, report)})
    return doc


def reported(doc: StateDoc, report_id: str) -> StateDoc:
    """The report `report_id` is done: no longer due (no change when it was not)."""
    left = tuple(r for r in doc.reports if r.id != report_id)
    return doc if len(left) == len(doc.reports) else doc.model_copy(update={"reports": left})


def report_due(
    name: str,
    state: EndedName,
    session: StoredSession,
    report_id: str,
    now: float,
    generation: int = 0,
    updated: bool = False,
) -> ReportDue:
    """The due report of `session`'s end as `state` (of `generation`; an update of the last
    end when `updated`)."""
    return ReportDue(
        id=report_id,
        name=name,
        date_prefix=session.date_prefix,
        state=state,
        started_at=session.started_at,
        stopped_at=session.stopped_at,
        drain_start=session.drain_start,
        finished_at=now,
        generation=generation,
        updated=updated,
    )


def reopen(doc: StateDoc, name: str, now: float, update: bool = False) -> StateDoc:
    """Something changed for an ended session (its parked files were retried; with `update`,
    a file it had uploaded changed): it drains again, from `now`."""
    session = doc.get(name)
    if session is None or session.watched:
        return doc
    change = {
        "state": "draining",
        "redrained_at": now,
        "drain_gen": _next(doc),
        "updated": session.updated or update,
    }
    return _replace(doc, session.model_copy(update=change))


def set_bandwidth(doc: StateDoc, override: BandwidthOverride | None) -> StateDoc:
    """The bandwidth override of every replica (None: cleared)."""
    if doc.bandwidth_override == override:
        return doc
    return doc.model_copy(update={"bandwidth_override": override})


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
        drain_gen=_next(doc),
    )
    return _replace(doc, session)
