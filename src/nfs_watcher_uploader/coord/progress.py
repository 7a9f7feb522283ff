"""Progress counters, per session, as they travel in a member blob's metadata.

Each member writes its own counters (files uploaded, bytes...) into its blob at most every
PROGRESS_EVERY_S and only when they changed; every member reads everyone's from the one
listing it makes anyway, so /v1/sessions and /v1/status on any replica can show the whole
without another request. The value is one compact JSON object, `{session: {counter: n}}`,
checked when read like anything else from the control container.
"""

import json
import re
from collections.abc import Mapping
from typing import cast

from nfs_watcher_uploader.coord.constants import COUNTER_MAX, PROGRESS_MAX_BYTES
from nfs_watcher_uploader.coord.untrusted import load_json
from nfs_watcher_uploader.items import check_session_name

Progress = Mapping[str, Mapping[str, int]]
COUNTER_NAME_RE = re.compile(r"^[a-z][a-z_]{0,31}$")
_DEPTH = 2  # {session: {counter: n}}


def encode(progress: Progress) -> tuple[str, int]:
    """The metadata value for `progress`, and how many sessions were left out to fit (the
    last ones: give the sessions that matter most first)."""
    sessions = list(progress.items())
    while True:
        text = json.dumps(dict(sessions), separators=(",", ":"), sort_keys=True)
        if len(text) <= PROGRESS_MAX_BYTES:
            return text, len(progress) - len(sessions)
        sessions.pop()


def parse(text: str) -> dict[str, dict[str, int]]:
    """Counters read back from a member blob; ValueError naming what is wrong."""
    value = load_json(text.encode("utf-8", "surrogateescape"), PROGRESS_MAX_BYTES, _DEPTH)
    if not isinstance(value, dict):
        raise ValueError("progress is not an object")
    out: dict[str, dict[str, int]] = {}
    sessions = cast(dict[str, object], value)  # JSON object keys are strings
    for session, counters in sessions.items():
        check_session_name(session)
        if not isinstance(counters, dict):
            raise ValueError(f"progress of {session!r} is not an object")
        checked: dict[str, int] = {}
        for name, n in cast(dict[str, object], counters).items():
            if not COUNTER_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a counter name")
            if type(n) is not int or not 0 <= n < COUNTER_MAX:
                raise ValueError(f"counter {name!r} is not a whole number from 0 to 2^53")
            checked[name] = n
        out[session] = checked
    return out


def total(progresses: list[dict[str, dict[str, int]]], session: str) -> dict[str, int]:
    """The counters of `session` summed over members."""
    out: dict[str, int] = {}
    for progress in progresses:
        for name, n in progress.get(session, {}).items():
            out[name] = out.get(name, 0) + n
    return out
