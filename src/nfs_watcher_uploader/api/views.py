"""What the API shows of the service's state: the domain's objects turned into response bodies
(`schemas`), so that no layer below the API knows an HTTP schema."""

from nfs_watcher_uploader.api.schemas import BandwidthView, FailedFile, SessionView
from nfs_watcher_uploader.items import ParkedFile
from nfs_watcher_uploader.rates import format_rate
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.sessions.session import Session


def session_view(session: Session) -> SessionView:
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
