"""The work item that flows from watcher to workers, and the API's request and response bodies."""

import itertools
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from nfs_watcher_uploader.constants import MANIFEST_SUFFIX, SESSION_NAME_MAX, SESSION_NAME_RE
from nfs_watcher_uploader.rates import parse_rate

# Where the file of a piece of work lies: still in incoming, claimed into the processing
# root, or in the completed tree (committed by a previous run, to be checked once more).
Where = Literal["incoming", "claimed", "completed"]
_tickets = itertools.count(1)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One file to upload: `rel` is its path below `incoming/<session>/` ('cam2/rec1.bin').
    `claimed` is False while it still sits in incoming; `Layout` says where it is.
    `ticket` names this piece of work through its retries (`replace` keeps it)."""

    session_name: str
    date_prefix: str
    rel: str
    claimed: bool
    # (size, mtime_ns) the watcher saw: lets a claim retried after a timeout recognise that
    # the earlier, abandoned attempt did move the file.
    seen: tuple[int, int] | None = None
    attempt: int = 0
    # (size, mtime_ns) of the bytes committed, once the blob is: only the "completed" rename
    # is left to do, after checking that the file still has that size and mtime.
    committed: tuple[int, int] | None = None
    # The blob it goes to, once that is not the default `<date>/<session>/<rel>`: a name
    # conflict chose another, or a late write sends the whole file again over the same blob.
    blob_name: str | None = None
    overwrite: bool = False
    # In the completed tree (`rel` is then its path there, below `<date>/<session>/`).
    completed: bool = False
    ticket: int = field(default_factory=lambda: next(_tickets))
    # The MD5 of the bytes committed, and whether the session's ledger has their line yet.
    md5: bytes | None = None
    recorded: bool = False

    @property
    def place(self) -> tuple[Where, str]:
        """Which file this is. Two pieces of work never hold the same place."""
        where: Where = "completed" if self.completed else "claimed" if self.claimed else "incoming"
        return where, self.rel


def printable(text: str) -> str:
    """`text` with everything that is not printable escaped: the bytes of a file name that is
    not valid UTF-8 (which Python holds as lone surrogates) as \\xNN, control characters as
    \\n, \\x00 and so on. Names reach JSON and logs only through this."""
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


# A string that reaches a response: made printable whatever it holds.
Printable = Annotated[str, AfterValidator(printable)]


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


def is_session_name(name: str) -> bool:
    """True when `name` is a safe session name (a folder name read from NFS, say)."""
    try:
        check_session_name(name)
    except ValueError:
        return False
    return True


def is_manifest_like(session_name: str) -> bool:
    """A session of this name would have its folder where another session's manifest is
    (`<date>/x.manifest.json/...` beside `<date>/x.manifest.json`): a hierarchical namespace
    (Data Lake Storage) cannot hold both. Refused for new sessions."""
    return session_name.lower().endswith(MANIFEST_SUFFIX)


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


SessionStateName = Literal["active", "draining", "drained", "drain_timed_out"]


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


class SessionList(BaseModel):
    sessions: list[SessionView]


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


class DismissResponse(BaseModel):
    """The parked file that was removed, with its reason (it is in the session's manifest)."""

    dismissed: FailedFile


class RetryRequest(_SessionNameBody):
    """Put parked files back in the queue: all of them, or one session's."""


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


@dataclass
class Stats:
    """The pipeline's counters, in one place: /v1/status and the metrics read them."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    last_error: str | None = None
    parked: int = 0
    retries: int = 0
    late_writes: int = 0
    dismissed: int = 0

    def __repr__(self) -> str:
        return (
            f"Stats(uploaded={self.uploaded} parked={self.parked} retries={self.retries} "
            f"late_writes={self.late_writes} dismissed={self.dismissed})"
        )

    def count_uploaded(self, size: int | None) -> None:
        self.uploaded += 1
        self.bytes_uploaded += size or 0
