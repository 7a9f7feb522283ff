"""The API's request and response bodies (pydantic): what goes over HTTP, and nothing else.
Every name in a response passes through `printable` (the `Printable` type)."""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator

from nfs_watcher_uploader.constants import MANIFEST_SUFFIX
from nfs_watcher_uploader.items import (
    SessionStateName,
    check_session_name,
    is_manifest_like,
    printable,
)
from nfs_watcher_uploader.rates import parse_rate
from nfs_watcher_uploader.work.dismissals import check_parked_as

# A string that reaches a response: made printable whatever it holds.
Printable = Annotated[str, AfterValidator(printable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _SessionNameBody(_Strict):
    session_name: str | None = None

    @field_validator("session_name")
    @classmethod
    def _validate(cls, v: str | None) -> str | None:
        return None if v is None else check_session_name(v)


class WatchStartRequest(_SessionNameBody):
    """Start watching `incoming/<session_name>/`; a name is generated when none is given."""

    @field_validator("session_name")
    @classmethod
    def _not_a_manifest(cls, v: str | None) -> str | None:
        if v is not None and is_manifest_like(v):
            raise ValueError(
                f"session_name must not end with {MANIFEST_SUFFIX!r}: "
                "that is the name of a session's manifest"
            )
        return v


class WatchStartResponse(BaseModel):
    date_prefix: str
    session_name: str
    encoded_session: str


class WatchStopResponse(BaseModel):
    enabled: bool
    session_name: Printable | None
    state: str | None


class FileInFlight(BaseModel):
    """A file a worker has taken and not finished, and how far it is."""

    session_name: Printable
    date_prefix: str
    # Its path below the session folder.
    path: Printable
    state: Literal["claiming", "staging", "uploading", "committing", "retrying"]
    # None until known (a file recovered from `.processing` before it is staged).
    size: int | None
    # Body bytes of this attempt in storage (sent, or found there from an earlier attempt).
    bytes_sent: int
    rate_bytes_per_second: float
    # 1 for the first attempt; retrying: the number of the next one, due at `next_attempt_at`
    # (seconds since the epoch), in `next_attempt_in_s`.
    attempt: int
    next_attempt_at: float | None
    next_attempt_in_s: float | None
    last_error: Printable | None


class SessionView(BaseModel):
    session_name: Printable
    date_prefix: str
    state: SessionStateName
    drained: bool
    started_at: float
    stopped_at: float | None
    files_seen: int
    bytes_seen: int
    waiting: int
    queued: int
    in_flight: int
    uploaded: int
    bytes_uploaded: int
    retrying: int
    failed: int
    # Parked files an operator took out (DELETE /v1/files/failed/..., or by hand).
    dismissed: int
    # Left in incoming and never uploaded: entries that are not regular files (symbolic links,
    # FIFOs, devices), and folders deeper than the depth limit (these block `drained`).
    ignored: int
    # Files the include/exclude patterns leave in incoming: never uploaded, never blocking
    # `drained`.
    excluded: int
    too_deep: int
    # Folders or files the service may not read: they block `drained` too.
    unreadable: int
    # Files waiting in incoming because an earlier file of the same name is still in progress.
    held: int
    # Uploaded under a new name because a blob with other bytes had theirs.
    renamed: int
    # Written to after they were claimed, and uploaded again whole.
    late_writes: int
    last_error: Printable | None
    # The latest things worth a look (ignored entries, renames, late writes), newest last.
    notices: list[Printable]
    # Progress: bytes uploaded plus those of files in flight; bytes still to go (files in
    # incoming as of the last scan, the rest of those in flight); the rate over the last
    # seconds; the ETA at that rate (null while nothing moves, 0 when nothing is left).
    bytes_done: int
    bytes_remaining: int
    rate_bytes_per_second: float
    eta_seconds: float | None
    # Its files in flight (FILES_SHOWN at most: `in_flight` and `retrying` count them all).
    files_in_flight: list[FileInFlight]


class SessionList(BaseModel):
    sessions: list[SessionView]
    # Sessions that ended (drained or timed out) known to the service, listed or not.
    ended_total: int


class MemberView(BaseModel):
    """One replica of the share (APP_COORDINATION=azure), as the last listing showed it."""

    incarnation: str
    # APP_MEMBER_NAME of that replica (the pod's name): a label only.
    host: Printable
    version: Printable
    live: bool
    leader: bool
    me: bool
    # The live member that took its files over, once it died.
    adopted_by: str | None
    # What could not be read of its blob (its counters are then left out).
    problem: Printable | None


class StatusResponse(BaseModel):
    enabled: bool
    active_session: Printable | None
    processed_ok: int
    processed_err: int
    last_error: Printable | None
    ready: bool
    queue_depth: int
    in_flight: int
    retrying: int
    failed: int
    dismissed: int
    retries: int
    draining_sessions: list[Printable]
    state_error: Printable | None
    # NFS calls given up at their deadline whose threads are still blocked (a hung mount).
    nfs_calls_hung: int
    # /healthz and /readyz in one look: liveness, and the start-up phase while not ready.
    healthy: bool
    health_detail: Printable | None
    phase: Printable
    # Bytes per second sent to storage over the last few seconds (headers included).
    rate_bytes_per_second: float
    # Files in flight and waiting for their next attempt, over all sessions (FILES_SHOWN at
    # most, those in flight first; `files_in_flight_total` counts them all).
    files_in_flight: list[FileInFlight]
    files_in_flight_total: int
    # `none` (one replica) or `azure` (README "Running N replicas"); with `azure`, the
    # control container, this replica's membership and every member of the last listing.
    coordination: str = "none"
    control_container: str | None = None
    member: str | None = None
    member_valid: bool | None = None
    renew_p99_ms: float | None = None
    coordination_error: Printable | None = None
    members: list[MemberView] = []


class FailedFile(BaseModel):
    date_prefix: str
    session_name: Printable
    # The file's path below its session folder, as the recorder wrote it.
    filename: Printable
    # Where it is parked below `_failed/<date>/<session>/`: the same, unless a parked file of
    # that name was already there.
    parked_as: Printable
    reason: Printable


class FailedList(BaseModel):
    files: list[FailedFile]
    # More are parked than `?limit=` let through.
    truncated: bool = False


class DismissResponse(BaseModel):
    """The parked file that was removed, with its reason (it is in the session's manifest)."""

    dismissed: FailedFile


class RetryRequest(_SessionNameBody):
    """Put parked files back in the queue: all of them, one session's, or one file of a session
    (`parked_as` as GET /v1/files/failed lists it)."""

    parked_as: str | None = None

    @model_validator(mode="after")
    def _one_file_of_a_session(self) -> "RetryRequest":
        if self.parked_as is not None:
            if self.session_name is None:
                raise ValueError("parked_as needs session_name")
            check_parked_as(self.parked_as)
        return self


class RetryResponse(BaseModel):
    requeued: int


class HealthResponse(BaseModel):
    ok: bool = True
    detail: Printable | None = None


class ReadyResponse(BaseModel):
    ready: bool = True
    detail: str | None = None


class BandwidthRequest(_Strict):
    """An override of the bandwidth limit: 'off', '512K', '10M', '1.5G', or bytes per second."""

    limit: str | int

    @field_validator("limit")
    @classmethod
    def _validate(cls, v: str | int) -> str | int:
        parse_rate(str(v))
        return v

    @property
    def rate(self) -> int | None:
        return parse_rate(str(self.limit))


class BandwidthView(BaseModel):
    # The limit in force ('off': none) and where it comes from: the override (PUT), the
    # schedule (`schedule_entry` says which entry), the setting, or none.
    limit: str
    limit_bytes_per_second: int | None
    source: Literal["override", "schedule", "setting", "none"]
    schedule_entry: str | None
    override: str | None
    setting: str
    schedule: str | None
    timezone: str
    # Bytes sent to storage per second over the last few seconds (headers included).
    rate_bytes_per_second: float
    # The rate over the last minutes, one point per `history_step_s`: [time (seconds since
    # the epoch), bytes per second], oldest first.
    history: list[tuple[float, float]]
    history_step_s: float
