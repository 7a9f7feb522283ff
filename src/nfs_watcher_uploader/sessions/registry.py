"""All sessions this service knows, the one that is active, and their changes: start, stop, the
end of a drain, a drain reopened; each saved to the state file before it counts.

With other replicas on the share (APP_COORDINATION=azure) the state is not a file but the
shared document (`SharedStore`, coord/shared_state): each change is one of coord/transitions'
rules written by compare-and-swap before it counts, and `refresh` applies what other replicas
wrote (each watcher pass). A session this replica finds only through files (taken over from a
dead member, say) is registered here at once and written to the shared state by
`publish_pending`; so is a drain reopened while storage could not be reached.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from nfs_watcher_uploader.constants import (
    DRAINED_SESSIONS_KEPT,
    STATE_FILE,
    STATE_FILE_MAX,
    STATE_TMP_PREFIX,
)
from nfs_watcher_uploader.coord import transitions
from nfs_watcher_uploader.coord.errors import CoordError
from nfs_watcher_uploader.coord.statedoc import ReportDue, StateDoc
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
Rule = Callable[[StateDoc], StateDoc]


class SharedStore(Protocol):
    """The session state shared by the replicas of one share (replicas/membership)."""

    def latest(self) -> StateDoc | None:
        """The state as last read or written (None before the first read)."""
        ...

    async def change(self, rule: Rule) -> StateDoc:
        """Apply `rule` by compare-and-swap; raises what it raises (SessionConflict) and
        coord's errors (ControlUnavailable...)."""
        ...


class Sessions:
    """All sessions this service knows, and the one that is active."""

    def __init__(
        self,
        processing_root: Path,
        nfs: Nfs,
        clock: Callable[[], float] = time.time,
        on_end: EndHook | None = None,
        shared: SharedStore | None = None,
    ):
        self.state_path = processing_root / STATE_FILE
        self.shared = shared
        # The generation of the shared state applied last (-1: none yet).
        self.applied_gen = -1 if shared is not None else 0
        # Sessions known here and not yet in the shared state (found through files), and
        # drains reopened here that could not be written yet.
        self._unshared: set[str] = set()
        self._reopen: dict[str, bool] = {}  # name -> a file it had uploaded changed
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
        says why: the service tries again. (Shared: the state as last read.)"""
        if self.shared is not None:
            self.refresh()
            self.loaded = self.applied_gen >= 0
            return
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
        parked files or work in progress: what still needs a person stays counted. (Shared:
        nothing to do; every change is written when it is made.)"""
        if self.shared is not None:
            return
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
            if self.shared is not None:
                self._unshared.add(name)
        return session

    # --- the shared state (APP_COORDINATION=azure) -----------------------------------------

    def refresh(self) -> None:
        """Apply the shared state if a newer one was read (no I/O: from memory)."""
        if self.shared is None:
            return
        doc = self.shared.latest()
        if doc is not None and doc.generation > self.applied_gen:
            self.apply(doc)

    def apply(self, doc: StateDoc) -> None:
        """Make the sessions what `doc` says. What this process learnt of each (counters, work
        in progress, parked files) stays; a session no longer listed is forgotten unless work
        of it is still here (then it is written back as found)."""
        if doc.generation < self.applied_gen:
            return
        self.applied_gen = doc.generation
        listed: set[str] = set()
        for stored in doc.sessions:
            listed.add(stored.name)
            self._unshared.discard(stored.name)
            session = self.by_name.get(stored.name)
            if session is None:
                session = Session(stored.name, stored.date_prefix, stored.state, 0.0)
                self.by_name[stored.name] = session
            session.date_prefix, session.state = stored.date_prefix, stored.state
            session.started_at, session.stopped_at = stored.started_at, stored.stopped_at
            session.redrained_at = stored.redrained_at
            session.drain_gen = stored.drain_gen or 0
            session.updated = stored.updated or self._reopen.get(stored.name, False)
            session.generation = max(session.generation, stored.end_generation)
        for name, session in list(self.by_name.items()):
            if name in listed or name in self._unshared:
                continue
            if session.pending or session.parked:
                session.state = "draining"
                self._unshared.add(name)
            else:
                del self.by_name[name]

    async def _change(self, rule: Rule) -> StateDoc:
        assert self.shared is not None
        doc = await self.shared.change(rule)
        self.apply(doc)
        return doc

    async def publish_pending(self) -> None:
        """Write what only this replica knows yet: sessions found through files, and drains
        reopened while storage could not be reached. Raises coord's errors (tried again)."""
        for name in sorted(self._unshared):
            session = self.by_name.get(name)
            if session is None:
                self._unshared.discard(name)
                continue
            recovered = functools.partial(
                transitions.recovered,
                name=name,
                date_prefix=session.date_prefix,
                now=self._clock(),
            )
            await self._change(recovered)
        for name, update in sorted(self._reopen.items()):
            reopen = functools.partial(
                transitions.reopen, name=name, now=self._clock(), update=update
            )
            await self._change(reopen)
            del self._reopen[name]

    async def end_shared(
        self, name: str, state: SessionStateName, drain_start: float | None, report: ReportDue
    ) -> None:
        """The leader's judgement: session `name` ended as `state` (if it is still in the
        drain that was judged: else SessionConflict), its report due in the same write."""
        await self._change(lambda d: transitions.finish(d, name, state, drain_start, report))

    async def reported(self, report_id: str) -> None:
        """The report `report_id` is done: no longer due."""
        await self._change(lambda d: transitions.reported(d, report_id))

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
        if self.shared is not None:
            return await self._start_shared(name, prepare)
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

    async def _start_shared(self, name: str, prepare: Callable[[str, str], None]) -> Session:
        async with self._changing:
            date = today_utc(self._clock)
            # First, as alone: a folder that is not ours refuses the start before it is written.
            await self._nfs.call(lambda: prepare(name, date))
            now = self._clock()
            await self._change(lambda d: transitions.start(d, name, date, now))
            return self.by_name[name]

    async def stop(self) -> Session | None:
        """Stop the active session: it drains from now on."""
        if self.shared is not None:
            return await self._stop_shared()
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

    async def _stop_shared(self) -> Session | None:
        async with self._changing:
            now = self._clock()
            stopped: list[str] = []

            def rule(doc: StateDoc) -> StateDoc:
                new, session = transitions.stop(doc, now)
                stopped[:] = [] if session is None else [session.name]
                return new

            await self._change(rule)
            return self.by_name.get(stopped[0]) if stopped else None

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
        if self.shared is not None:
            await self._reopen_shared(session, why, update)
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

    async def _reopen_shared(self, session: Session, why: str, update: bool) -> None:
        name, now = session.name, self._clock()
        session.state = "draining"  # here at once; in the shared state now or by publish_pending
        session.updated = session.updated or update
        logger.info("Session %s drains again: %s", name, why, extra={"session_name": name})
        try:
            await self._change(lambda d: transitions.reopen(d, name, now, update))
        except CoordError as exc:
            self._reopen[name] = self._reopen.get(name, False) or update
            logger.warning("Session %s: reopening not written yet (%s); trying again", name, exc)
