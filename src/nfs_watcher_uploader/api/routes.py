"""HTTP endpoints. Probes read in-memory state only; everything else answers 4xx or 503 with a
message, never a traceback. The status page and the docs are `page`'s; what every answer tells
a browser, `headers`'.

With a token configured (auth.py), every /v1/* request needs it, and /metrics too with
APP_METRICS_REQUIRE_TOKEN; the probes stay open (the kubelet has no token). Every request is
bounded first (limits.py).
"""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from uuid_utils import uuid7

from nfs_watcher_uploader.api import page
from nfs_watcher_uploader.api.auth import ApiToken, TokenFirst, require_token
from nfs_watcher_uploader.api.headers import BrowserHeaders
from nfs_watcher_uploader.api.limits import BodyLimit
from nfs_watcher_uploader.api.schemas import (
    BandwidthRequest,
    BandwidthView,
    DismissResponse,
    FailedList,
    HealthResponse,
    ReadyResponse,
    RetryRequest,
    RetryResponse,
    SessionList,
    SessionView,
    StatusResponse,
    WatchStartRequest,
    WatchStartResponse,
    WatchStopResponse,
)
from nfs_watcher_uploader.api.views import (
    bandwidth_view,
    failed_file,
    files_view,
    replicas_status,
    session_view,
    sessions_view,
)
from nfs_watcher_uploader.constants import DATE_DIR_RE
from nfs_watcher_uploader.coord.errors import CoordError, StateTooNew
from nfs_watcher_uploader.errors import NotOurs, SessionConflict
from nfs_watcher_uploader.items import check_session_name, printable
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.work.dismissals import check_parked_as

logger = logging.getLogger(__name__)

# The control API: every path starts with CONTROL_PREFIX.
CONTROL_PREFIX = "/v1"
router = APIRouter()
probes = APIRouter()
metrics = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]


def generate_session_name() -> str:
    return f"00-session-{uuid7()}"


def _unavailable(what: str, exc: OSError) -> HTTPException:
    reason = exc.strerror or type(exc).__name__
    return HTTPException(503, f"{what} failed on NFS ({reason}); nothing was changed, retry later")


def _require_loaded(service: Service) -> None:
    if not service.sessions.loaded:
        raise HTTPException(503, f"service is starting ({service.phase}); retry shortly")


@probes.get("/healthz", responses={503: {"model": HealthResponse}})
async def healthz(service: ServiceDep) -> JSONResponse:
    problem = service.liveness()
    body = HealthResponse(ok=problem is None, detail=problem)
    return JSONResponse(body.model_dump(), status_code=200 if problem is None else 503)


@probes.get("/readyz", responses={503: {"model": ReadyResponse}})
async def readyz(service: ServiceDep) -> JSONResponse:
    body = ReadyResponse(ready=service.ready, detail=None if service.ready else service.phase)
    return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)


@router.post("/v1/watch/start", responses={409: {}, 422: {}, 503: {}})
async def watch_start(
    service: ServiceDep, body: WatchStartRequest | None = None
) -> WatchStartResponse:
    _require_loaded(service)
    name = (body.session_name if body else None) or generate_session_name()
    try:
        session = await service.start_session(name)
    except (SessionConflict, NotOurs) as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        raise _unavailable(f"creating the folders of session {name!r}", exc) from None
    return WatchStartResponse(
        date_prefix=session.date_prefix, session_name=session.name, encoded_session=session.name
    )


@router.post("/v1/watch/stop", responses={503: {}})
async def watch_stop(service: ServiceDep) -> WatchStopResponse:
    _require_loaded(service)
    try:
        session = await service.stop_session()
    except OSError as exc:
        raise _unavailable("saving the stopped session", exc) from None
    return WatchStopResponse(
        enabled=False,
        session_name=session.name if session else None,
        state=session.state if session else None,
    )


@router.get("/v1/status")
async def status(service: ServiceDep) -> StatusResponse:
    sessions = service.sessions
    active = sessions.active
    pipeline = service.pipeline
    problem = service.liveness()
    files = list(pipeline.progress.files.values())
    found = StatusResponse(
        enabled=active is not None,
        active_session=active.name if active else None,
        processed_ok=pipeline.stats.uploaded,
        processed_err=pipeline.stats.parked,
        last_error=pipeline.stats.last_error,
        ready=service.ready,
        queue_depth=pipeline.queue.qsize(),
        in_flight=pipeline.in_flight,
        retrying=pipeline.retrying,
        failed=sessions.parked(),
        dismissed=pipeline.stats.dismissed,
        retries=pipeline.stats.retries,
        draining_sessions=[s.name for s in sessions.by_name.values() if s.state == "draining"],
        state_error=sessions.state_error,
        nfs_calls_hung=service.nfs.abandoned,
        healthy=problem is None,
        health_detail=problem,
        phase=service.phase,
        rate_bytes_per_second=round(service.meter.rate(), 1),
        files_in_flight=files_view(files),
        files_in_flight_total=len(files),
    )
    return replicas_status(service, found)


@router.get("/v1/sessions", responses={422: {}})
async def list_sessions(
    service: ServiceDep, ended: Annotated[int | None, Query(ge=0, le=10_000)] = None
) -> SessionList:
    """Every session watched, and those that ended: all, or the `ended` latest."""
    sessions, ended_total = sessions_view(service, ended)
    return SessionList(sessions=sessions, ended_total=ended_total)


@router.get("/v1/sessions/{name}", responses={404: {}, 422: {}})
async def get_session(service: ServiceDep, name: str) -> SessionView:
    try:
        check_session_name(name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    session = service.sessions.by_name.get(name)
    if session is None:
        raise HTTPException(404, f"no session named {name!r} is known")
    return session_view(service, session)


@router.get("/v1/files/failed", responses={422: {}, 503: {}})
async def failed_files(
    service: ServiceDep, limit: Annotated[int | None, Query(ge=1, le=100_000)] = None
) -> FailedList:
    """Parked files with their reasons, read from NFS: all, or the first `limit` (the status
    page asks for a page's worth: only their reasons are read)."""
    try:
        listed = await service.pipeline.parked.listing(limit=None if limit is None else limit + 1)
    except OSError as exc:
        raise _unavailable("listing parked files", exc) from None
    truncated = limit is not None and len(listed) > limit
    return FailedList(files=[failed_file(p) for p in listed[:limit]], truncated=truncated)


@router.post("/v1/files/retry", responses={409: {}, 503: {}})
async def retry_failed(service: ServiceDep, body: RetryRequest | None = None) -> RetryResponse:
    if not service.ready:
        raise HTTPException(503, f"service is not ready ({service.phase}); retry shortly")
    try:
        if body is None:
            count = await service.pipeline.parked.requeue(None)
        else:
            count = await service.pipeline.parked.requeue(body.session_name, body.parked_as)
    except SessionConflict as exc:
        raise HTTPException(409, printable(str(exc))) from None
    except OSError as exc:
        raise _unavailable("moving parked files back", exc) from None
    return RetryResponse(requeued=count)


@router.delete(
    "/v1/files/failed/{session_name}/{parked_as:path}",
    responses={404: {}, 409: {}, 422: {}, 503: {}},
)
async def dismiss_failed(
    service: ServiceDep, session_name: str, parked_as: str, date_prefix: str | None = None
) -> DismissResponse:
    """Remove a parked file and its reason (you took it out): recorded in the session's
    manifest as dismissed (never `complete`), counted and logged; the session may drain."""
    if not service.ready:
        raise HTTPException(503, f"service is not ready ({service.phase}); retry shortly")
    try:
        check_session_name(session_name)
        check_parked_as(parked_as)
        if date_prefix is not None and not DATE_DIR_RE.fullmatch(date_prefix):
            raise ValueError("date_prefix must be YYYYMMDD")
    except ValueError as exc:
        raise HTTPException(422, printable(str(exc))) from None
    try:
        gone = await service.dismissals.dismiss(session_name, parked_as, date_prefix)
    except LookupError as exc:
        raise HTTPException(404, printable(str(exc.args[0]))) from None
    except SessionConflict as exc:
        raise HTTPException(409, printable(str(exc))) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HTTPException(
            503,
            f"dismissing failed on NFS ({reason}); retry later (a file already removed is "
            "recorded as dismissed at the next check)",
        ) from None
    return DismissResponse(dismissed=failed_file(gone))


def _require_bandwidth(service: Service) -> None:
    if not service.bandwidth.loaded:
        raise HTTPException(503, f"service is starting ({service.phase}); retry shortly")


@router.get("/v1/bandwidth")
async def get_bandwidth(service: ServiceDep) -> BandwidthView:
    return bandwidth_view(service)


@router.put("/v1/bandwidth", responses={422: {}, 503: {}})
async def put_bandwidth(service: ServiceDep, body: BandwidthRequest) -> BandwidthView:
    """Override the limit until DELETE, across restarts; in force within a second."""
    _require_bandwidth(service)
    try:
        await service.bandwidth.set_override(body.rate)
    except OSError as exc:
        raise _unavailable("saving the bandwidth override", exc) from None
    return bandwidth_view(service)


@router.delete("/v1/bandwidth", responses={503: {}})
async def delete_bandwidth(service: ServiceDep) -> BandwidthView:
    """Clear the override: the schedule or the setting decides again."""
    _require_bandwidth(service)
    try:
        await service.bandwidth.clear_override()
    except OSError as exc:
        raise _unavailable("removing the bandwidth override", exc) from None
    return bandwidth_view(service)


@metrics.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format, from the same instruments that OTLP exports."""
    data = generate_latest(request.app.state.metrics_registry)
    return PlainTextResponse(data, media_type=CONTENT_TYPE_LATEST)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems: list[str] = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _coordination_error(request: Request, exc: Exception) -> JSONResponse:
    """Storage could not take a change of the shared state (APP_COORDINATION=azure)."""
    assert isinstance(exc, CoordError)
    logger.warning("Shared state on %s: %s", request.url.path, exc)
    if isinstance(exc, StateTooNew):
        detail = f"{exc}: a newer version of the service wrote the shared state (a rolling "
        detail += "upgrade?); nothing was changed, retry on an upgraded replica"
    else:
        detail = f"storage cannot take the change of the shared session state ({exc}); "
        detail += "nothing was changed, retry later"
    return JSONResponse({"detail": printable(detail)}, 503)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OSError)
    logger.warning("OS error on %s: %s", request.url.path, exc)
    reason = exc.strerror or type(exc).__name__
    return JSONResponse({"detail": f"storage or NFS error ({reason}); retry later"}, 503)


def install(app: FastAPI, token: ApiToken | None, metrics_require_token: bool = False) -> None:
    """The routes, the token check where one is configured, and the request bounds."""
    app.state.api_token = token
    guard = [] if token is None else [Depends(require_token)]
    app.include_router(probes)
    app.include_router(router, dependencies=guard)
    app.include_router(metrics, dependencies=guard if metrics_require_token else [])
    if token is not None:
        protected = (CONTROL_PREFIX, "/metrics") if metrics_require_token else (CONTROL_PREFIX,)
        app.add_middleware(TokenFirst, token=token, prefixes=protected)
    app.include_router(page.router)
    app.add_middleware(BodyLimit)
    # Added last, so it runs first.
    app.add_middleware(BrowserHeaders, protected=CONTROL_PREFIX, open_api=token is None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(CoordError, _coordination_error)
