"""Files in flight and how far each one is: what `/v1/status`, `/v1/sessions` and the status
page show.

A file's record (`FileProgress`) lives from the moment a worker takes the file until it is
uploaded, parked or let go; between attempts it stays, `retrying`, with the time the next one
is due. Its steps, as the transfer enters them:

    claiming -> staging -> uploading -> committing -> (uploaded: forgotten)
        |          |           |             |
        +----------+-----------+-------------+--> retrying -> (its next attempt) staging ...

Bytes are counted where they leave (`uplink.wire.Sending`, which `FileProgress` is): one int
add per chunk sent, nothing else. Every other figure (rates, remaining bytes, ETAs) is computed
only when the API asks, from the samples its asks leave behind (`rates.SampledRate`); no NFS call.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nfs_watcher_uploader.constants import PROGRESS_RATE_WINDOW_S
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.rates import SampledRate
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.uplink.wire import Sending

FileState = Literal["claiming", "staging", "uploading", "committing", "retrying"]
_SENDING = ("staging", "uploading")


class FileProgress(Sending):
    """One file in flight (or waiting for its next attempt). `sent` counts the body bytes of
    this attempt (and blocks an earlier one left in storage); it may pass `size` when a request
    is sent again, so views clamp it."""

    __slots__ = (
        "_rate",
        "attempt",
        "began",
        "date_prefix",
        "due",
        "error",
        "path",
        "session_name",
        "size",
        "state",
    )

    def __init__(self, item: WorkItem, now: float) -> None:
        super().__init__()
        self.session_name = item.session_name
        self.date_prefix = item.date_prefix
        self.path = item.rel
        self.size: int | None = item.seen[0] if item.seen and item.seen[0] >= 0 else None
        self.state: FileState = "staging" if item.claimed else "claiming"
        # Which attempt this is (0: the first), or, retrying, the next one.
        self.attempt = item.attempt
        # When this attempt began (monotonic), when the next is due (wall clock), and why the
        # last one failed.
        self.began = now
        self.due: float | None = None
        self.error: str | None = None
        self._rate = SampledRate(PROGRESS_RATE_WINDOW_S, now)

    def __repr__(self) -> str:
        return f"FileProgress({self.path!r} {self.state} sent={self.sent} size={self.size})"

    def enter(self, state: FileState, now: float, size: int | None = None) -> None:
        """The transfer entered `state`. Staging starts an attempt: nothing of it is sent yet
        (what an earlier attempt left in storage is counted again as the upload finds it)."""
        self.state = state
        if size is not None:
            self.size = size
        if state == "staging":
            self.sent = 0
            self.began = now
            self._rate = SampledRate(PROGRESS_RATE_WINDOW_S, now)

    @property
    def step(self) -> FileState:
        """The state as shown: every byte sent means the upload waits for its commit."""
        if self.state == "uploading" and self.size is not None and self.sent >= self.size:
            return "committing"
        return self.state

    @property
    def done(self) -> int:
        """Bytes sent, at most the file's size."""
        return self.sent if self.size is None else min(self.sent, self.size)

    def rate(self, now: float) -> float:
        """Bytes per second over the last asks (0 outside an attempt's sending steps)."""
        if self.state not in _SENDING:
            return 0.0
        return self._rate.rate(now, self.sent)


@dataclass(frozen=True, slots=True)
class SessionProgress:
    """How far a session is, computed when asked."""

    bytes_done: int
    bytes_remaining: int
    rate: float
    eta_s: float | None
    files: list[FileProgress]


class InFlight:
    """Every file a worker has taken and not finished, by its work's ticket."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.files: dict[int, FileProgress] = {}

    def __repr__(self) -> str:
        return f"InFlight(files={len(self.files)})"

    def take(self, item: WorkItem) -> FileProgress:
        """A worker took `item` (a new file, or the next attempt of one retrying)."""
        now = self._clock()
        progress = self.files.get(item.ticket)
        if progress is None:
            progress = self.files[item.ticket] = FileProgress(item, now)
        else:
            progress.attempt, progress.due = item.attempt, None
            progress.enter("staging" if item.claimed else "claiming", now)
        return progress

    def retrying(self, item: WorkItem, due: float, error: str) -> None:
        """`item` failed; its next attempt is at `due` (wall clock)."""
        progress = self.files.get(item.ticket)
        if progress is not None:
            progress.state, progress.due, progress.error = "retrying", due, error
            progress.attempt = item.attempt + 1  # the next one

    def forget(self, item: WorkItem) -> None:
        """No more work on `item` here (uploaded, parked, let go, queued again whole)."""
        self.files.pop(item.ticket, None)

    def by_session(self) -> dict[str, list[FileProgress]]:
        """The files of each session that has any."""
        out: dict[str, list[FileProgress]] = {}
        for f in self.files.values():
            out.setdefault(f.session_name, []).append(f)
        return out

    def session(
        self, session: Session, files: list[FileProgress], uplink_rate: float = 0.0
    ) -> SessionProgress:
        """Bytes done and left, the recent rate, and the ETA at that rate; `files` are the
        session's (`by_session`), `uplink_rate` what the uplink sends now (for a first ask)."""
        now = self._clock()
        done = session.bytes_uploaded + sum(f.done for f in files)
        left = sum((f.size or 0) - f.done for f in files)
        if session.watched:
            left += session.bytes_in_incoming()
        if not session.watched and not files:  # ended, nothing in flight: nothing moves
            session.done_rate = None
            return SessionProgress(done, left, 0.0, 0.0 if left == 0 else None, files)
        sampled = session.done_rate
        if sampled is None:
            # At a first ask there is nothing to compare with: the uplink's recent rate, shared
            # by the files sending now.
            session.done_rate = SampledRate(PROGRESS_RATE_WINDOW_S, now, done)
            sending = sum(1 for f in self.files.values() if f.state in _SENDING)
            mine = sum(1 for f in files if f.state in _SENDING)
            rate = uplink_rate * mine / sending if sending else 0.0
        else:
            rate = sampled.rate(now, done)
        eta = left / rate if rate > 0 and left > 0 else (0.0 if left == 0 else None)
        return SessionProgress(done, left, rate, eta, files)
