"""Each member's counters of each session, as they travel in its member blob (coord/progress),
and their sums over the replicas, which `/v1/sessions` and `/v1/status` show on any replica.

    published  per session: what this process counted (files seen, uploaded, parked...), what
               it has in progress, and `quiet`: the generation its last pass began with if it
               found nothing of a draining session here (the leader's drain needs every
               member's); watched sessions first, so they are never the ones left out; and its
               files in flight in bytes (done, left) and its recent rate, so that any replica
               shows the session's bytes done, bytes left, rate and ETA over them all
    summed     over the members of the last listing that count: the live ones (this one from
               memory, fresher than its blob) and the dead ones nobody has adopted yet (the
               first adopter adds what a dead member had counted to its own counters,
               `inherit`, so an adopted member's counters are in its adopter's, whether that
               one lives or not: never counted twice, at worst not at all for a while); of a
               dead member, its files in flight count as left (its adopter sends them again)
               and its rate as nothing

Counters are for the eye: nothing decides on them but `quiet` and `pending` (the leader).
"""

from collections.abc import Callable, Iterable, Mapping

from nfs_watcher_uploader.coord.roster import MemberRecord, View
from nfs_watcher_uploader.sessions.session import Session

Counters = dict[str, int]
# Summed over members, in /v1/sessions and /v1/status.
SUMMED = (
    "files_seen",
    "bytes_seen",
    "uploaded",
    "bytes_uploaded",
    "queued",
    "in_flight",
    "retrying",
    "failed",
    "dismissed",
    "renamed",
    "late_writes",
)
# Added to an adopter's own counters when it adopts a member (what the dead one had done).
INHERITED = (
    "files_seen",
    "bytes_seen",
    "uploaded",
    "bytes_uploaded",
    "dismissed",
    "renamed",
    "late_writes",
)
PENDING = "pending"
QUIET = "quiet"
# This member's files in flight (bytes sent, bytes to send) and its recent rate (bytes/s).
FLIGHT_DONE = "flight_done"
FLIGHT_LEFT = "flight_left"
RATE = "rate"
FLIGHT = (FLIGHT_DONE, FLIGHT_LEFT, RATE)
# Sessions published: the watched ones, then the most recently started others.
PUBLISHED_MAX = 12


def counters(session: Session) -> Counters:
    """What this process counts of `session`, as published."""
    quiet = session.quiet_gen if not (session.pending or session.parked) else 0
    out: Counters = {
        "files_seen": session.files_seen,
        "bytes_seen": session.bytes_seen,
        "uploaded": session.uploaded,
        "bytes_uploaded": session.bytes_uploaded,
        "queued": session.count("queued"),
        "in_flight": session.count("in_flight"),
        "retrying": session.count("retrying"),
        "failed": len(session.parked),
        "dismissed": session.dismissed,
        "renamed": session.renamed,
        "late_writes": session.late_writes,
        PENDING: len(session.pending),
        QUIET: quiet,
    }
    return {k: v for k, v in out.items() if v}


def published(
    sessions: Iterable[Session], flight: Callable[[Session], Counters] | None = None
) -> dict[str, Counters]:
    """This member's progress: watched sessions first, then the newest others with counts;
    `flight` gives a session's FLIGHT counters."""
    ordered = sorted(sessions, key=lambda s: (not s.watched, -s.started_at))
    out: dict[str, Counters] = {}
    for session in ordered:
        found = counters(session)
        if flight is not None:
            found.update((k, v) for k, v in flight(session).items() if v > 0)
        if found and len(out) < PUBLISHED_MAX:
            out[session.name] = found
    return out


def counted(view: View, me: str) -> list[MemberRecord]:
    """The other members whose counters count (see the module docstring)."""
    live = set(view.live_names())
    return [m for m in view.members if m.incarnation != me and (m.live or m.adopted_by not in live)]


def summed(view: View | None, me: str, mine: Mapping[str, Counters], session: str) -> Counters:
    """`session`'s counters over the members that count (this one's from `mine`)."""
    out = dict(mine.get(session, {}))
    for record in counted(view, me) if view is not None else []:
        theirs = dict(record.progress.get(session, {}))
        if not record.live:  # sent again by its adopter: all of it is still to send
            theirs[FLIGHT_LEFT] = theirs.get(FLIGHT_LEFT, 0) + theirs.pop(FLIGHT_DONE, 0)
            theirs.pop(RATE, None)
        for name, n in theirs.items():
            out[name] = out.get(name, 0) + n
    return out


def inherit(session: Session, theirs: Mapping[str, int]) -> None:
    """Add what an adopted member had counted of `session` to this process's counters."""
    session.files_seen += theirs.get("files_seen", 0)
    session.bytes_seen += theirs.get("bytes_seen", 0)
    session.uploaded += theirs.get("uploaded", 0)
    session.bytes_uploaded += theirs.get("bytes_uploaded", 0)
    session.dismissed += theirs.get("dismissed", 0)
    session.renamed += theirs.get("renamed", 0)
    session.late_writes += theirs.get("late_writes", 0)
