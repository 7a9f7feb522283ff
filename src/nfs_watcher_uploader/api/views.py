"""What the API shows of the service's state: the domain's objects turned into response bodies
(`schemas`), so that no layer below the API knows an HTTP schema."""

from collections.abc import Mapping

from nfs_watcher_uploader.api.schemas import (
    BandwidthView,
    FailedFile,
    MemberView,
    SessionView,
    StatusResponse,
)
from nfs_watcher_uploader.coord.member import latency
from nfs_watcher_uploader.items import ParkedFile
from nfs_watcher_uploader.rates import format_rate
from nfs_watcher_uploader.replicas.progress import SUMMED
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.sessions.session import Session


def session_view(session: Session, totals: Mapping[str, int] | None = None) -> SessionView:
    """`session` as this process knows it; with other replicas, `totals` are its counters
    summed over them (replicas/progress)."""
    view = _session_view(session)
    if totals is None:
        return view
    return view.model_copy(update={k: totals.get(k, 0) for k in SUMMED})


def _session_view(session: Session) -> SessionView:
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
    )


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
