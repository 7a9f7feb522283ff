"""What the API shows of the service's state: the domain's objects turned into response bodies
(`schemas`), so that no layer below the API knows an HTTP schema."""

import heapq
import time

from nfs_watcher_uploader.api.schemas import (
    BandwidthView,
    FailedFile,
    FileInFlight,
    MemberView,
    SessionView,
    StatusResponse,
)
from nfs_watcher_uploader.coord.member import latency
from nfs_watcher_uploader.items import ParkedFile
from nfs_watcher_uploader.rates import format_rate
from nfs_watcher_uploader.replicas.progress import FLIGHT_DONE, FLIGHT_LEFT, RATE, SUMMED
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.work.progress import FileProgress

# Files listed in one answer at most (a storage outage may leave thousands retrying; they are
# counted in full elsewhere): those in flight first, then those due soonest.
FILES_SHOWN = 100
_STEP_ORDER = {"committing": 0, "uploading": 1, "staging": 2, "claiming": 3, "retrying": 4}


def files_view(files: list[FileProgress]) -> list[FileInFlight]:
    now, wall = time.monotonic(), time.time()
    shown = heapq.nsmallest(
        FILES_SHOWN, files, key=lambda f: (_STEP_ORDER[f.step], f.due or 0.0, f.began)
    )
    return [
        FileInFlight(
            session_name=f.session_name,
            date_prefix=f.date_prefix,
            path=f.path,
            state=f.step,
            size=f.size,
            bytes_sent=f.done,
            rate_bytes_per_second=round(f.rate(now), 1),
            attempt=f.attempt + 1,
            next_attempt_at=f.due,
            next_attempt_in_s=None if f.due is None else round(max(0.0, f.due - wall), 1),
            last_error=f.error,
        )
        for f in shown
    ]


def session_view(
    service: Service,
    session: Session,
    files: list[FileProgress] | None = None,
    uplink_rate: float | None = None,
) -> SessionView:
    """`session` as this process knows it; with other replicas, its counters summed over them
    (replicas/progress: `Service.totals`), and its bytes done with them. `files` (the
    session's files in flight) and `uplink_rate`, when the caller has them for several
    sessions already."""
    view = _session_view(service, session, files, uplink_rate)
    totals = service.totals(session)
    if totals is None:
        return view
    update: dict[str, object] = {k: totals.get(k, 0) for k in SUMMED}
    # Over every member: this one's own numbers are fresh, the others' as last published
    # (their FLIGHT counters; this one's are not in `totals`). Files in flight are listed for
    # this replica only.
    others = max(0, totals.get("bytes_uploaded", 0) - session.bytes_uploaded)
    done = view.bytes_done + others + totals.get(FLIGHT_DONE, 0)
    left = view.bytes_remaining + totals.get(FLIGHT_LEFT, 0)
    rate = view.rate_bytes_per_second + totals.get(RATE, 0)
    update["bytes_done"], update["bytes_remaining"] = done, left
    update["rate_bytes_per_second"] = round(rate, 1)
    update["eta_seconds"] = (
        round(left / rate, 1) if rate > 0 and left > 0 else (0.0 if left == 0 else None)
    )
    return view.model_copy(update=update)


def _session_view(
    service: Service,
    session: Session,
    files: list[FileProgress] | None,
    uplink_rate: float | None,
) -> SessionView:
    if files is None:
        files = service.pipeline.progress.by_session().get(session.name, [])
    if uplink_rate is None:
        uplink_rate = service.meter.rate()
    progress = service.pipeline.progress.session(session, files, uplink_rate)
    return SessionView(
        session_name=session.name,
        date_prefix=session.date_prefix,
        state=session.state,
        drained=session.state == "drained",
        started_at=session.started_at,
        stopped_at=session.stopped_at,
        files_seen=session.files_seen,
        bytes_seen=session.bytes_seen,
        waiting=session.waiting,
        queued=session.count("queued"),
        in_flight=session.count("in_flight"),
        uploaded=session.uploaded,
        bytes_uploaded=session.bytes_uploaded,
        retrying=session.count("retrying"),
        failed=len(session.parked),
        dismissed=session.dismissed,
        ignored=len(session.ignored),
        excluded=len(session.excluded),
        too_deep=len(session.too_deep),
        unreadable=len(session.unreadable),
        held=len(session.held),
        renamed=session.renamed,
        late_writes=session.late_writes,
        last_error=session.last_error,
        notices=list(session.notices),
        bytes_done=progress.bytes_done,
        bytes_remaining=progress.bytes_remaining,
        rate_bytes_per_second=round(progress.rate, 1),
        eta_seconds=None if progress.eta_s is None else round(progress.eta_s, 1),
        files_in_flight=files_view(files),
    )


def sessions_view(service: Service, ended: int | None = None) -> tuple[list[SessionView], int]:
    """Every session watched and, of those that ended, all or the `ended` latest (a poller
    such as the status page needs a few, not the hundreds kept); and how many ended."""
    known = list(service.sessions.by_name.values())
    done = [s for s in known if not s.watched]
    if ended is not None:
        latest = heapq.nlargest(ended, done, key=lambda s: s.stopped_at or s.started_at)
        shown = {id(s) for s in latest}
        known = [s for s in known if s.watched or id(s) in shown]
    grouped = service.pipeline.progress.by_session()
    uplink_rate = service.meter.rate()  # sums the last seconds' chunks: once per answer
    views = [session_view(service, s, grouped.get(s.name, []), uplink_rate) for s in known]
    return views, len(done)


def failed_file(parked: ParkedFile) -> FailedFile:
    return FailedFile(
        date_prefix=parked.date_prefix,
        session_name=parked.session_name,
        filename=parked.path,
        parked_as=parked.parked_as,
        reason=parked.reason,
    )


def bandwidth_view(service: Service) -> BandwidthView:
    bandwidth = service.bandwidth
    limit = bandwidth.in_force()
    override = bandwidth.override
    return BandwidthView(
        limit=format_rate(limit.rate),
        limit_bytes_per_second=limit.rate,
        source=limit.source,
        schedule_entry=limit.entry,
        override=None if override is None else format_rate(override[0]),
        setting=format_rate(bandwidth.setting),
        schedule=None if bandwidth.schedule is None else str(bandwidth.schedule),
        timezone=service.settings.timezone,
        rate_bytes_per_second=round(service.meter.rate(), 1),
        history=[(round(t, 1), round(r, 1)) for t, r in service.uplink_history.points],
        history_step_s=service.uplink_history.step,
    )


def replicas_status(service: Service, status: StatusResponse) -> StatusResponse:
    """`status` with what the other replicas add (APP_COORDINATION=azure)."""
    replicas = service.replicas
    if replicas is None:
        return status
    membership = replicas.membership
    coordinator, member = membership.coordinator, membership.member
    view = coordinator.view if coordinator is not None else None
    leader = view.leader() if view is not None else None
    members = [
        MemberView(
            incarnation=m.incarnation,
            host=m.host,
            version=m.version,
            live=m.live,
            leader=m.incarnation == leader,
            me=m.incarnation == membership.incarnation,
            adopted_by=m.adopted_by,
            problem=m.problem,
        )
        for m in (view.members if view is not None else ())
    ]
    lat = latency(list(member.latencies)) if member is not None else None
    error = (member.last_error if member is not None else None) or (
        coordinator.last_error if coordinator is not None else None
    )
    others = service.uploaded_elsewhere()
    return status.model_copy(
        update={
            "coordination": "azure",
            "control_container": membership.container,
            "member": membership.incarnation,
            "member_valid": membership.valid(),
            "renew_p99_ms": None if lat is None else round(lat.p99 * 1000, 1),
            "coordination_error": error,
            "members": members,
            "processed_ok": status.processed_ok + others,
        }
    )
