"""All sessions this service knows, the one that is active, and their changes: start, stop, the
end of a drain, a drain reopened; each saved to the state file before it counts."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nfs_watcher_uploader.constants import (
    DRAINED_SESSIONS_KEPT,
    STATE_FILE,
    STATE_FILE_MAX,
    STATE_TMP_PREFIX,
)
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.items import SessionStateName, WorkItem, check_session_name
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.state import StateFile
from nfs_watcher_uploader.sessions.session import Session, today_utc
from nfs_watcher_uploader.sessions.stored import dump_state, parse_state

logger = logging.getLogger(__name__)


# Told that a session ended (drained or timed out), before that is saved; raises OSError when
# it cannot take note (the session then goes on draining, and ends at a later scan).
EndHook = Callable[[Session, SessionStateName], Awaitable[None]]


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
        self._file = StateFile(self.state_path, nfs, STATE_TMP_PREFIX, STATE_FILE_MAX)
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
        """Read the state file. A damaged one is set aside and reported, never fatal; when NFS
        fails (reading it, or setting a damaged one aside) nothing is loaded and `state_error`
        says why: the service tries again."""
        try:
            loaded = await self._file.load(parse_state)
        except OSError as exc:
            self.state_error = str(exc)
            logger.error("Session state unreadable: %s", self.state_error)
            return
        self.loaded = True
        for s in loaded.value or []:
            self.by_name[s.name] = s
        if loaded.damaged is not None:
            self.state_error = (
                f"damaged session state file {self.state_path}: {loaded.damaged}; "
                f"kept as {loaded.aside}"
            )
            logger.error("%s", self.state_error)

    async def save(self) -> None:
        """Write the sessions worth keeping to the state file, atomically. The state is taken
        once the previous save is done, so the file always ends with the latest state. Only
        the oldest ended sessions past DRAINED_SESSIONS_KEPT are forgotten, and never one with
        parked files or work in progress: what still needs a person stays counted."""
        async with self._saving:
            ended = [s for s in self.by_name.values() if not s.watched]
            done = [s for s in ended if not s.parked and not s.pending]
            for old in done[: max(0, len(ended) - DRAINED_SESSIONS_KEPT)]:
                del self.by_name[old.name]
            await self._file.save(dump_state(self.by_name.values()))
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
        session.incoming = {}  # not scanned any more: its last scan is not kept
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
        session.updated = False
        try:
            await self.save()
        except OSError:
            logger.warning("Could not save session state; will retry on the next change")

    async def reopen(
        self, session: Session, why: str = "its parked files were retried", update: bool = False
    ) -> None:
        """Something changed for an ended session (`why`): it drains again, with a fresh
        timeout, and ends anew. With `update`, a file it had uploaded changed: its next end is
        reported as an update of the last (`session.updated`)."""
        if session.watched:
            return
        session.state, session.redrained_at = "draining", self._clock()
        session.updated = session.updated or update
        logger.info(
            "Session %s drains again: %s",
            session.name,
            why,
            extra={"session_name": session.name},
        )
        try:
            await self.save()
        except OSError:
            logger.warning("Could not save session state; will retry on the next change")
