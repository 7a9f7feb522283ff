"""The shared session state document, and how it is read back.

It is today's `sessions.json` with a few more fields, so that the first replica imports
today's file as it is:

    {"version": 1, "generation": 7,
     "sessions": [{"name", "date_prefix", "state", "started_at", "stopped_at",
                   "redrained_at", "drain_gen"}, ...],
     "reports": [{"id", "name", "date_prefix", "state", "started_at", "stopped_at",
                  "drain_start", "finished_at"}, ...],
     "bandwidth_override": {"rate": 1048576} | null}

    generation          raised by every write: a member says which state it has seen, and an
                        operator which is newer
    drain_gen           the generation whose write began the session's current drain: a
                        member's "nothing of it left here" counts for that drain only if it was
                        found after the member had seen that generation (no clocks compared)
    reports             the ends of sessions whose manifest and event are still due, kept
                        until a replica has done them (the leader that ended a session may die
                        before it wrote its report job)
    bandwidth_override  PUT /v1/bandwidth, for every replica Anyone allowed to write the control
container may have written anything there: the size and depth are capped before it is parsed
(untrusted.py), then shape and meaning are checked (types strictly, finite times, session
names and dates by the service's own rules, each name once). As today, of several sessions
listed as active, the newest stays active and the others drain. A document of a later version
is StateTooNew: read by a newer replica during a rolling upgrade, never overwritten by us.
"""

import json
import logging
from typing import Annotated, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
)

from nfs_watcher_uploader.constants import DATE_DIR_RE
from nfs_watcher_uploader.coord.constants import COUNTER_MAX, JSON_MAX_DEPTH, STATE_MAX_BYTES
from nfs_watcher_uploader.coord.errors import StateTooNew
from nfs_watcher_uploader.coord.untrusted import load_json
from nfs_watcher_uploader.items import SessionStateName, check_session_name

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# 200 drained sessions are kept (constants.DRAINED_SESSIONS_KEPT), and a few watched ones.
SESSIONS_MAX = 1000
WATCHED_STATES = ("active", "draining")
_REASONS_SHOWN = 3


def _date(v: str) -> str:
    if not DATE_DIR_RE.fullmatch(v):
        raise ValueError("date_prefix must be YYYYMMDD")
    return v


SessionName = Annotated[str, AfterValidator(check_session_name)]
DatePrefix = Annotated[str, AfterValidator(_date)]
Seconds = Annotated[FiniteFloat, Field(ge=0)]


class StoredSession(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    name: SessionName
    date_prefix: DatePrefix
    state: SessionStateName
    started_at: Seconds
    stopped_at: Seconds | None = None
    redrained_at: Seconds | None = None
    drain_gen: int | None = Field(default=None, ge=0, lt=COUNTER_MAX)
    # A file it had uploaded changed after it ended: its next end is reported as an update
    # (`session.updated`, cloud/reports).
    updated: bool = False
    # The generation of its latest end (cloud/reports): the next end's is higher whatever the
    # clocks of the leaders that judged them, so the later end's manifest is never taken for
    # an older one.
    end_generation: int = Field(default=0, ge=0, lt=COUNTER_MAX)

    @property
    def watched(self) -> bool:
        return self.state in WATCHED_STATES

    @property
    def drain_start(self) -> float | None:
        """When its current drain began: the stop, or the retry that reopened it."""
        return self.redrained_at or self.stopped_at


EndedName = Literal["drained", "drain_timed_out"]


class ReportDue(BaseModel):
    """A session's end whose manifest and event are still to be done (reports.py's job, by id)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f-]+$")]
    name: SessionName
    date_prefix: DatePrefix
    state: EndedName
    started_at: Seconds
    stopped_at: Seconds | None = None
    drain_start: Seconds | None = None
    finished_at: Seconds
    # The end's generation and whether it is reported as an update (cloud/reports' job).
    generation: int = Field(default=0, ge=0, lt=COUNTER_MAX)
    updated: bool = False


class BandwidthOverride(BaseModel):
    """The limit set through the API for every replica (`rate` None: off)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    rate: int | None = Field(default=None, ge=1)


class StateDoc(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    version: int = STATE_VERSION
    # Below 2^53, as every counter a member publishes (its `quiet` is a generation): a state
    # of a higher one would leave every member unable to say it is quiet.
    generation: int = Field(default=0, ge=0, lt=COUNTER_MAX)
    sessions: tuple[StoredSession, ...] = Field(default=(), max_length=SESSIONS_MAX)
    reports: tuple[ReportDue, ...] = Field(default=(), max_length=SESSIONS_MAX)
    bandwidth_override: BandwidthOverride | None = None

    @property
    def active(self) -> StoredSession | None:
        return next((s for s in self.sessions if s.state == "active"), None)

    def get(self, name: str) -> StoredSession | None:
        return next((s for s in self.sessions if s.name == name), None)


EMPTY = StateDoc()


def parse(raw: bytes) -> StateDoc:
    """The document in `raw`. Raises StateTooNew for a later version, ValueError (pydantic's
    ValidationError is one) naming what is wrong for anything else that is not a state."""
    value = load_json(raw, STATE_MAX_BYTES, JSON_MAX_DEPTH)
    if not isinstance(value, dict):
        raise ValueError("the state is not a JSON object")
    version = cast(dict[str, object], value).get("version")
    if type(version) is int and version > STATE_VERSION:
        raise StateTooNew(f"the session state is version {version}; this replica reads 1")
    if version != STATE_VERSION:
        raise ValueError(f"unknown state version {version!r}")
    doc = StateDoc.model_validate_json(raw)
    names = [s.name for s in doc.sessions]
    if len(set(names)) != len(names):
        raise ValueError("a session name appears twice")
    return _one_active(doc)


def _one_active(doc: StateDoc) -> StateDoc:
    active = sorted((s for s in doc.sessions if s.state == "active"), key=lambda s: s.started_at)
    if len(active) < 2:
        return doc
    demoted = {s.name for s in active[:-1]}
    # Only one session can be active. Rather than forget them all (their files would sit in
    # incoming for good), the newest stays active and the others drain.
    logger.error("Session state lists %s as active too; they drain now", sorted(demoted))
    return doc.model_copy(
        update={
            "sessions": tuple(
                s.model_copy(update={"state": "draining", "stopped_at": s.started_at})
                if s.name in demoted
                else s
                for s in doc.sessions
            )
        }
    )


def reason(exc: ValueError) -> str:
    """Why a state was refused, in one line: where and what, for the first few problems."""
    if not isinstance(exc, ValidationError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or 'document'}: "
        + str(e["msg"]).removeprefix("Value error, ")
        for e in exc.errors()[:_REASONS_SHOWN]
    ]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def dump(doc: StateDoc) -> bytes:
    """The bytes of `doc`, in the layout of today's sessions.json."""
    return json.dumps(doc.model_dump(mode="json"), indent=1).encode()
