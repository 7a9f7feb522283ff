"""The shared session state document, and how it is read back.

It is today's `sessions.json` with one more field, `generation`, raised by every write (so a
member can say which state it has seen, and an operator which is newer):

    {"version": 1, "generation": 7, "sessions": [{"name", "date_prefix", "state",
     "started_at", "stopped_at", "redrained_at"}, ...]}

so that the first replica imports today's file as it is. Anyone allowed to write the control
container may have written anything there: the size and depth are capped before it is parsed
(untrusted.py), then shape and meaning are checked (types strictly, finite times, session
names and dates by the service's own rules, each name once). As today, of several sessions
listed as active, the newest stays active and the others drain. A document of a later version
is StateTooNew: read by a newer replica during a rolling upgrade, never overwritten by us.
"""

import json
import logging
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from nfs_watcher_uploader.constants import DATE_DIR_RE
from nfs_watcher_uploader.coord.constants import JSON_MAX_DEPTH, STATE_MAX_BYTES
from nfs_watcher_uploader.coord.errors import StateTooNew
from nfs_watcher_uploader.coord.untrusted import load_json
from nfs_watcher_uploader.models import SessionStateName, check_session_name

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# 200 drained sessions are kept (constants.DRAINED_SESSIONS_KEPT), and a few watched ones.
SESSIONS_MAX = 1000
WATCHED_STATES = ("active", "draining")


class StoredSession(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    name: str
    date_prefix: str
    state: SessionStateName
    started_at: FiniteFloat = Field(ge=0)
    stopped_at: FiniteFloat | None = Field(default=None, ge=0)
    redrained_at: FiniteFloat | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_session_name(v)

    @field_validator("date_prefix")
    @classmethod
    def _date(cls, v: str) -> str:
        if not DATE_DIR_RE.fullmatch(v):
            raise ValueError("date_prefix must be YYYYMMDD")
        return v

    @property
    def watched(self) -> bool:
        return self.state in WATCHED_STATES

    @property
    def drain_start(self) -> float | None:
        """When its current drain began: the stop, or the retry that reopened it."""
        return self.redrained_at or self.stopped_at


class StateDoc(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", hide_input_in_errors=True)

    version: int = STATE_VERSION
    generation: int = Field(default=0, ge=0)
    sessions: tuple[StoredSession, ...] = Field(default=(), max_length=SESSIONS_MAX)

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


def dump(doc: StateDoc) -> bytes:
    """The bytes of `doc`, in the layout of today's sessions.json."""
    return json.dumps(doc.model_dump(mode="json"), indent=1).encode()
