"""Sessions: which incoming folders are watched, their progress, and the file that keeps them.

A session is `active` from start to stop, then `draining` until every file in its incoming
folder is in storage (`drained`), or until APP_DRAIN_TIMEOUT_S passes (`drain_timed_out`: what
is left stays where it is and is reported). Active, draining and recently drained sessions are
written to `<processing root>/sessions.json` (temp file, fsync, rename) on every change and
resumed on start, so a restart neither forgets a session nor the answer to "is it drained?".
A session that ended with files parked drains again once they are retried (`reopen`), with a
new APP_DRAIN_TIMEOUT_S from then. `on_end` is told of every end before it is recorded (the
manifest and the event are due from then on).
"""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, field_validator

from nfs_watcher_uploader.constants import (
    DATE_DIR_RE,
    DRAINED_SESSIONS_KEPT,
    STATE_FILE,
    STATE_TMP_PREFIX,
)
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.fsops import Nfs, Scan, read_or_none, set_aside, write_atomic
from nfs_watcher_uploader.layout import Layout
from nfs_watcher_uploader.models import (
    SessionStateName,
    SessionView,
    Where,
    WorkItem,
    check_session_name,
    printable,
)

logger = logging.getLogger(__name__)

# Where a file this process works on is: waiting in the queue, being transferred, or waiting
# for its next attempt.
Phase = Literal["queued", "in_flight", "retrying"]
WATCHED_STATES = ("active", "draining")
STATE_VERSION = 1
NOTICES_KEPT = 20
# A session's date, state, start, stop and reopening: what a restart changes.
_Dates = tuple[str, SessionStateName, float, float | None, float | None]


@dataclass
class Session:
    name: str
    date_prefix: str
    state: SessionStateName
    started_at: float
    stopped_at: float | None = None
    # Set when parked files of an ended session were retried: it drains again from then.
    redrained_at: float | None = None
    # Progress: since this process started, from what the ledger and the parked files said at
    # start-up (`restore`).
    files_seen: int = 0
    bytes_seen: int = 0
    uploaded: int = 0
    bytes_uploaded: int = 0
    waiting: int = 0
    # Files the filter leaves in incoming, from the last scan.
    excluded: list[str] = field(default_factory=list[str])
    renamed: int = 0
    late_writes: int = 0
    dismissed: int = 0
    last_error: str | None = None
    # Work this process owns for the session: the file's place -> (phase, the work's ticket).
    pending: dict[tuple[Where, str], tuple[Phase, int]] = field(
        default_factory=dict[tuple[Where, str], tuple[Phase, int]]
    )
    # Files parked in the failed folder.
    parked: set[str] = field(default_factory=set[str])
    # From the last scan: entries that are not regular files, folders too deep to upload.
    ignored: dict[str, str] = field(default_factory=dict[str, str])
    too_deep: list[str] = field(default_factory=list[str])
    unreadable: list[str] = field(default_factory=list[str])
    # Files dated in the future: judged by how long they stay unchanged here.
    future: set[str] = field(default_factory=set[str])
    # Files left in incoming because an earlier file of the same name is still in progress.
    held: set[str] = field(default_factory=set[str])
    notices: deque[str] = field(default_factory=lambda: deque[str](maxlen=NOTICES_KEPT))
    # Blobs counted from the ledger at start-up whose files were still in progress then (blob ->
    # size): uploaded again (found already there), they are not counted twice.
    restored: dict[str, int] = field(default_factory=dict[str, int])

    @property
    def watched(self) -> bool:
        return self.state in WATCHED_STATES

    @property
    def drain_start(self) -> float:
        """When the current drain began: the stop, or the retry that reopened the session."""
        return self.redrained_at or self.stopped_at or 0.0

    def count(self, phase: Phase) -> int:
        return sum(1 for p, _ in self.pending.values() if p == phase)

    def busy(self) -> set[str]:
        """Names that work is queued, in flight or retrying for, in incoming or claimed: a file
        of such a name in incoming is not offered (again) until that work is done."""
        return {rel for where, rel in self.pending if where != "completed"}

    def in_progress(self, rel: str) -> bool:
        return ("incoming", rel) in self.pending or ("claimed", rel) in self.pending

    def mark(self, item: WorkItem, phase: Phase) -> None:
        self.pending[item.place] = (phase, item.ticket)

    def release(self, item: WorkItem) -> None:
        """No more work on `item` (done, parked, skipped). Work that holds its place since
        (another ticket) is left alone."""
        if self.pending.get(item.place, (None, 0))[1] == item.ticket:
            del self.pending[item.place]

    def count_uploaded(self, item: WorkItem, size: int | None) -> None:
        self.release(item)
        counted = self.restored.pop(Layout.blob_name(item), None)
        if counted is None:
            self.uploaded += 1
            self.bytes_uploaded += size or 0
        elif size:  # sent again, whole, over a blob the ledger had: its size now
            self.bytes_uploaded += size - counted

    def restore(
        self, uploaded: int, bytes_uploaded: int, pending: int, restored: dict[str, int]
    ) -> None:
        """Counters after a restart, from the ledger (`uploaded`, `bytes_uploaded`: one per
        blob, as the manifest counts) and the parked files (already in `parked`); `pending`
        files left in progress have no line yet, `restored` blobs do (see the field)."""
        self.uploaded, self.bytes_uploaded, self.restored = uploaded, bytes_uploaded, restored
        self.files_seen = uploaded + len(self.parked) + pending
        # Files in progress are staged again, and counted then.
        self.bytes_seen = bytes_uploaded - sum(restored.values())

    def park(self, item: WorkItem, parked_as: str | None, error: str) -> None:
        """`item` is parked as `parked_as` (None: it had vanished, nothing was parked)."""
        self.release(item)
        if parked_as is not None:
            self.parked.add(parked_as)
        self.fail(error)

    def found_parked(self, parked_as: str) -> None:
        """A file parked by an earlier run."""
        self.parked.add(parked_as)

    def unpark(self, parked_as: str) -> None:
        self.parked.discard(parked_as)

    def dismiss(self, parked_as: str, text: str) -> None:
        """An operator took the parked file out: it no longer keeps the session from draining."""
        self.parked.discard(parked_as)
        self.dismissed += 1
        self.notice(text)

    def fail(self, error: str) -> None:
        self.last_error = printable(error)

    def hold(self, rel: str) -> bool:
        """`rel` waits in incoming for an earlier file of its name; True the first time."""
        first = rel not in self.held
        self.held.add(rel)
        return first

    def claimed(self, before: WorkItem, after: WorkItem | None) -> None:
        """A claim ended: `after` is the claimed item, None when the file was not taken."""
        self.held.discard(before.rel)
        self.release(before)
        if after is not None:
            self.files_seen += 1
            self.mark(after, "in_flight")

    def staged(self, size: int) -> None:
        self.bytes_seen += size

    def count_renamed(self, text: str) -> None:
        self.renamed += 1
        self.notice(text)

    def count_late_write(self, text: str) -> None:
        self.late_writes += 1
        self.notice(text)

    def ignore(self, item: WorkItem, what: str, text: str) -> None:
        """`item` is not a regular file of ours: no work on it, and it is reported."""
        self.release(item)
        self.ignored[item.rel] = what
        self.notice(text)

    def observe(self, scan: Scan, future: list[str]) -> list[tuple[int, str]]:
        """Take what a scan found that will never be uploaded; return what is new, as (log
        level, message) for the watcher to log."""
        new: list[tuple[int, str]] = []
        if scan.problem is not None and self.last_error != scan.problem:
            new.append((logging.ERROR, f"{scan.problem}; nothing in it is taken"))
            self.fail(scan.problem)
        for rel, what in scan.ignored.items():
            if self.ignored.get(rel) != what:
                new.append((logging.WARNING, f"{rel}: {what}; left alone"))
        for rel in set(scan.too_deep) - set(self.too_deep):
            new.append((logging.ERROR, f"{rel}: folder too deep to upload; cannot drain"))
        for rel in set(scan.unreadable) - set(self.unreadable):
            new.append((logging.ERROR, f"{rel}: cannot be read (permissions); cannot drain"))
        for rel in set(future) - self.future:
            new.append(
                (logging.WARNING, f"{rel}: its mtime is in the future (the writer's clock?)")
            )
        self.future = set(future)
        for _, text in new:
            self.notice(text)
        self.ignored, self.too_deep = scan.ignored, scan.too_deep
        self.unreadable = scan.unreadable
        # A file whose name an earlier, claimed file still holds waits in incoming.
        # (Counted from the work in progress, which is small, not from the files, which may be
        # 100,000 at every poll.)
        waiting_for = {
            rel for where, rel in self.pending if where == "claimed" and rel in scan.files
        }
        for rel in sorted(waiting_for - self.held):
            new.append((logging.INFO, f"{rel}: waits until an earlier file of that name is done"))
            self.notice(new[-1][1])
        self.held = (self.held & scan.files.keys()) | waiting_for
        self.waiting = len(scan.files) - len(self.busy() & scan.files.keys())
        self.excluded = scan.excluded
        return new

    def restart(self, date_prefix: str, now: float) -> "_Dates":
        """Make this drained (or timed out) session active again, keeping what it still owns
        (parked files, work in progress). Returns what `undo` needs."""
        before = (
            self.date_prefix,
            self.state,
            self.started_at,
            self.stopped_at,
            self.redrained_at,
        )
        self.date_prefix, self.state, self.started_at, self.stopped_at = (
            date_prefix,
            "active",
            now,
            None,
        )
        self.redrained_at = None  # its next drain starts at its next stop
        return before

    def undo(self, before: "_Dates") -> None:
        (
            self.date_prefix,
            self.state,
            self.started_at,
            self.stopped_at,
            self.redrained_at,
        ) = before

    def view(self) -> SessionView:
        return SessionView(
            session_name=self.name,
            date_prefix=self.date_prefix,
            state=self.state,
            drained=self.state == "drained",
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            files_seen=self.files_seen,
            bytes_seen=self.bytes_seen,
            waiting=self.waiting,
            queued=self.count("queued"),
            in_flight=self.count("in_flight"),
            uploaded=self.uploaded,
            bytes_uploaded=self.bytes_uploaded,
            retrying=self.count("retrying"),
            failed=len(self.parked),
            dismissed=self.dismissed,
            ignored=len(self.ignored),
            excluded=len(self.excluded),
            too_deep=len(self.too_deep),
            unreadable=len(self.unreadable),
            held=len(self.held),
            renamed=self.renamed,
            late_writes=self.late_writes,
            last_error=self.last_error,
            notices=list(self.notices),
        )

    def notice(self, text: str) -> None:
        """Keep `text` (made printable) among the session's latest notices."""
        self.notices.append(printable(text))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date_prefix": self.date_prefix,
            "state": self.state,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "redrained_at": self.redrained_at,
        }

    def __repr__(self) -> str:
        return (
            f"Session({self.name!r} {self.state} date={self.date_prefix} "
            f"uploaded={self.uploaded} pending={len(self.pending)} parked={len(self.parked)})"
        )


def today_utc(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%d")


# Told that a session ended (drained or timed out), before that is saved; raises OSError when
# it cannot take note (the session then goes on draining, and ends at a later scan).
EndHook = Callable[["Session", SessionStateName], Awaitable[None]]


class Sessions:
    """All sessions this service knows, and the one that is active."""

    def __init__(
        self,
        processing_root: Path,
        nfs: Nfs,
        clock: Callable[[], float] = time.time,
        on_end: EndHook | None = None,
    ):
        self.state_path = processing_root / STATE_FILE
        self._nfs = nfs
        self._clock = clock
        self._on_end = on_end
        self.by_name: dict[str, Session] = {}
        self.state_error: str | None = None
        self.loaded = False
        # Start and stop check the sessions and change them with NFS calls in between: one at
        # a time. Saves write the latest state, in order.
        self._changing = asyncio.Lock()
        self._saving = asyncio.Lock()

    @property
    def active(self) -> Session | None:
        return next((s for s in self.by_name.values() if s.state == "active"), None)

    def watched(self) -> list[Session]:
        return [s for s in self.by_name.values() if s.watched]

    def parked(self) -> int:
        """Files parked, over all sessions."""
        return sum(len(s.parked) for s in self.by_name.values())

    def __repr__(self) -> str:
        return f"Sessions({list(self.by_name.values())!r})"

    async def load(self) -> None:
        """Read the state file. A damaged one is moved aside and reported, never fatal."""
        try:
            raw = await self._nfs.call(lambda: read_or_none(self.state_path))
        except OSError as exc:
            self.state_error = f"cannot read {self.state_path}: {exc.strerror or exc}"
            logger.error("Session state unreadable: %s", self.state_error)
            return
        self.loaded = True
        if raw is None:
            return
        try:
            for s in _parse_state(raw):
                self.by_name[s.name] = s
        except ValueError as exc:
            self.by_name.clear()
            try:
                aside = await self._nfs.call(lambda: set_aside(self.state_path, "damaged"))
            except OSError:
                logger.exception("Could not move the damaged state file aside")
                aside = self.state_path
            self.state_error = (
                f"damaged session state file {self.state_path}: {exc}; kept as {aside}"
            )
            logger.error("%s", self.state_error)

    async def save(self) -> None:
        """Write the sessions worth keeping to the state file, atomically. The state is taken
        once the previous save is done, so the file always ends with the latest state."""
        async with self._saving:
            drained = [s for s in self.by_name.values() if not s.watched]
            for old in drained[:-DRAINED_SESSIONS_KEPT]:
                del self.by_name[old.name]
            sessions = [s.to_json() for s in self.by_name.values()]
            data = json.dumps({"version": STATE_VERSION, "sessions": sessions}, indent=1).encode()
            await self._nfs.call(lambda: write_atomic(self.state_path, data, STATE_TMP_PREFIX))
            self.state_error = None

    def register_recovered(self, date_prefix: str, name: str) -> Session:
        """A session found only through files left in `.processing`: drain it."""
        session = self.by_name.get(name)
        if session is None:
            session = Session(name, date_prefix, "draining", self._clock(), self._clock())
            self.by_name[name] = session
        return session

    def resume(self, name: str) -> None:
        """Make a recovered session the active one again (a first start after a crash)."""
        session = self.by_name[name]
        session.state, session.stopped_at = "active", None

    def for_item(self, item: WorkItem) -> Session:
        """The session a file belongs to (registered as draining if this process never saw it:
        a file recovered from `.processing`, or unparked)."""
        return self.register_recovered(item.date_prefix, item.session_name)

    async def start(self, name: str, prepare: Callable[[str, str], None]) -> Session:
        """Make `name` the active session. `prepare(name, date)` creates its folders (runs on
        NFS)."""
        check_session_name(name)
        async with self._changing:
            if (current := self.active) is not None:
                raise SessionConflict(f"session {current.name!r} is already active; stop it first")
            old = self.by_name.get(name)
            if old is not None and old.state == "draining":
                raise SessionConflict(
                    f"session {name!r} is still draining; wait for it or pick a name"
                )
            date = today_utc(self._clock)
            await self._nfs.call(lambda: prepare(name, date))
            # A name started again keeps its Session: its parked files and the work still in
            # progress for it belong to it.
            session = old or Session(name, date, "active", self._clock())
            before = session.restart(date, self._clock()) if old is not None else None
            self.by_name[name] = session
            try:
                await self.save()
            except BaseException:
                if before is None:
                    del self.by_name[name]
                else:
                    session.undo(before)
                raise
            return session

    async def stop(self) -> Session | None:
        """Stop the active session: it drains from now on."""
        async with self._changing:
            session = self.active
            if session is None:
                return None
            session.state = "draining"
            session.stopped_at = self._clock()
            try:
                await self.save()
            except BaseException:
                session.state, session.stopped_at = "active", None
                raise
            return session

    async def finish(self, session: Session, state: SessionStateName) -> None:
        """Record that a draining session is drained or timed out (the caller has just checked
        that it is: the state changes before any await)."""
        session.state = state
        if self._on_end is not None:
            try:
                await self._on_end(session, state)
            except OSError as exc:
                session.state = "draining"  # not ended until its end is on record
                logger.warning(
                    "Session %s: cannot record its end (%s); trying again at the next scan",
                    session.name,
                    exc,
                    extra={"session_name": session.name},
                )
                return
        try:
            await self.save()
        except OSError:
            logger.warning("Could not save session state; will retry on the next change")

    async def reopen(self, session: Session) -> None:
        """Files of an ended session were retried: it drains again, with a fresh timeout."""
        if session.watched:
            return
        session.state, session.redrained_at = "draining", self._clock()
        logger.info(
            "Session %s drains again: its parked files were retried",
            session.name,
            extra={"session_name": session.name},
        )
        try:
            await self.save()
        except OSError:
            logger.warning("Could not save session state; will retry on the next change")


class _StoredSession(BaseModel):
    name: str
    date_prefix: str
    state: SessionStateName
    started_at: float
    stopped_at: float | None
    redrained_at: float | None = None

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


class _StateDoc(BaseModel):
    version: Literal[1]
    sessions: list[_StoredSession]


def _parse_state(raw: bytes) -> list[Session]:
    """Raises ValueError (pydantic's ValidationError is one) for anything but a valid file."""
    doc = _StateDoc.model_validate_json(raw)
    sessions = [
        Session(e.name, e.date_prefix, e.state, e.started_at, e.stopped_at, e.redrained_at)
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
