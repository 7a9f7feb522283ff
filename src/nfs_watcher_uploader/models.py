"""The work item that flows from watcher to workers, and the API's request and response bodies."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from nfs_watcher_uploader.constants import SESSION_NAME_MAX, SESSION_NAME_RE


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One file to upload. `claimed` is False while it still sits in incoming."""

    source_path: Path
    session_name: str
    date_prefix: str
    filename: str
    claimed: bool
    attempt: int = 0
    # The blob is committed; only the "completed" rename is left to do.
    uploaded: bool = False

    @property
    def blob_name(self) -> str:
        return f"{self.date_prefix}/{self.session_name}/{self.filename}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.session_name, self.filename)


def check_session_name(name: str) -> str:
    """Return `name` if it is a safe session name, else raise ValueError naming the rule broken."""
    if name in (".", ".."):
        raise ValueError(f"session_name must not be {name!r}: it would point outside incoming")
    if len(name) > SESSION_NAME_MAX:
        raise ValueError(
            f"session_name is {len(name)} characters long; the limit is {SESSION_NAME_MAX}"
        )
    if not SESSION_NAME_RE.fullmatch(name):
        raise ValueError(
            "session_name may contain only letters A-Z and a-z, digits, '_', '.' and '-'"
        )
    return name


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


class WatchStartResponse(BaseModel):
    date_prefix: str
    session_name: str
    encoded_session: str


class WatchStopResponse(BaseModel):
    enabled: bool
    session_name: str | None
    state: str | None


SessionStateName = Literal["active", "draining", "drained", "drain_timed_out"]


class SessionView(BaseModel):
    session_name: str
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
    last_error: str | None


class SessionList(BaseModel):
    sessions: list[SessionView]


class StatusResponse(BaseModel):
    enabled: bool
    active_session: str | None
    processed_ok: int
    processed_err: int
    last_error: str | None
    ready: bool
    queue_depth: int
    in_flight: int
    retrying: int
    failed: int
    retries: int
    draining_sessions: list[str]
    state_error: str | None


class FailedFile(BaseModel):
    date_prefix: str
    session_name: str
    filename: str
    reason: str


class FailedList(BaseModel):
    files: list[FailedFile]


class RetryRequest(_SessionNameBody):
    """Put parked files back in the queue: all of them, or one session's."""


class RetryResponse(BaseModel):
    requeued: int


class HealthResponse(BaseModel):
    ok: bool = True
    detail: str | None = None


class ReadyResponse(BaseModel):
    ready: bool = True
    detail: str | None = None
