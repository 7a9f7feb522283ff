"""The file that keeps the sessions, `<processing root>/sessions.json`: its format, written and
read back, and checked like any input from the share (a damaged one is set aside by the loader).
"""

import json
import logging
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, NonNegativeInt

from nfs_watcher_uploader.items import SessionStateName
from nfs_watcher_uploader.nfs.reading import DatePrefix, SessionName, Time
from nfs_watcher_uploader.sessions.session import Session

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def dump_state(sessions: Iterable[Session]) -> bytes:
    """The state file's bytes for `sessions`."""
    stored = [
        {
            "name": s.name,
            "date_prefix": s.date_prefix,
            "state": s.state,
            "started_at": s.started_at,
            "stopped_at": s.stopped_at,
            "redrained_at": s.redrained_at,
            "generation": s.generation,
            "updated": s.updated,
        }
        for s in sessions
    ]
    return json.dumps({"version": STATE_VERSION, "sessions": stored}, indent=1).encode()


class _StoredSession(BaseModel):
    name: SessionName
    date_prefix: DatePrefix
    state: SessionStateName
    # Finite: a drain that started at NaN would never time out.
    started_at: Time
    stopped_at: Time | None
    redrained_at: Time | None = None
    # Not bounded by this device's clock: one that starts a day behind (a board before NTP)
    # must not set the sessions aside.
    generation: NonNegativeInt = 0
    updated: bool = False


class _StateDoc(BaseModel):
    version: Literal[1]
    sessions: list[_StoredSession]


def parse_state(raw: bytes) -> list[Session]:
    """Raises ValueError (pydantic's ValidationError is one) for anything but a valid file."""
    doc = _StateDoc.model_validate_json(raw)
    sessions = [
        Session(
            e.name,
            e.date_prefix,
            e.state,
            e.started_at,
            e.stopped_at,
            e.redrained_at,
            generation=e.generation,
            updated=e.updated,
        )
        for e in doc.sessions
    ]
    if len({s.name for s in sessions}) != len(sessions):
        raise ValueError("a session name appears twice")
    active = sorted((s for s in sessions if s.state == "active"), key=lambda s: s.started_at)
    for extra in active[:-1]:
        # Only one session can be active. Rather than forget them all (their files would sit in
        # incoming for good), the newest stays active and the others drain.
        logger.error("State file lists %s as active too; it drains now", extra.name)
        extra.state, extra.stopped_at = "draining", extra.started_at
    return sessions
