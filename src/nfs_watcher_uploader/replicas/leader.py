"""The leader: the oldest live member (no lease of its own: every replica reads the same
listing) ends drains, sees that every end is reported, mends the shared state, and takes over
the trees nobody owns. Every action is conditional (compare-and-swap on the state, renames
that never replace), so two members that each think they lead for a moment do no harm.

A draining session is drained when, in this order:
    1. every member of the listing is live (nothing to adopt, nothing being adopted: files in
       a dead member's tree are in nobody's counters), and each says it found nothing of the
       session in its last pass, a pass begun after it had seen the write that began this
       drain (`quiet` >= `drain_gen`: generations, never clocks, across replicas);
    2. the leader's own pass, begun after (1), finds nothing in incoming/<session> and nothing
       of it in any member's claimed or parked tree;
    3. a listing made after (2) still shows the same members, all still quiet.
Then the end goes into the shared state with its report due, in one write that fails if the
session was started, stopped or reopened since (the judgement was of an earlier drain). A
session that has drained for longer than APP_DRAIN_TIMEOUT_S ends as `drain_timed_out` the
same way. That time is counted on the leader's monotonic clock from when it first saw that
drain (its `drain_gen`), never from the stop's time: `stopped_at` comes from the wall clock of
whichever replica took the stop, and a board behind by an hour (no battery-backed clock, no
NTP yet) would have ended a drain at once. Skew cannot shorten a drain; a change of leader
lengthens it by at most one timeout, and a leader that was not the leader for a while counts
from when it first saw the drain, before.

Its report job is written to NFS before that write and queued after it (cloud/reports), so a
leader that dies in between leaves a job that is run, or dropped when the write never went
through. A report still due a while later that no live replica is running is made again here
from what the shared state keeps of it.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader.cloud.jobs import Job
from nfs_watcher_uploader.cloud.reports import Reports, Verdict
from nfs_watcher_uploader.cloud.webhooks import event_id
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import OWNERS_DIR, PARKED_DIR
from nfs_watcher_uploader.coord import transitions
from nfs_watcher_uploader.coord.constants import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from nfs_watcher_uploader.coord.errors import CoordError
from nfs_watcher_uploader.coord.roster import View
from nfs_watcher_uploader.coord.statedoc import EndedName, ReportDue, StateDoc, StoredSession
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.intake.filters import FileFilter
from nfs_watcher_uploader.items import is_session_name
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.scan import scan_session
from nfs_watcher_uploader.replicas.adoption import Adoption
from nfs_watcher_uploader.replicas.membership import Membership
from nfs_watcher_uploader.replicas.progress import QUIET, counters
from nfs_watcher_uploader.sessions.registry import Sessions

logger = logging.getLogger(__name__)

# A listing counts as made after the leader's pass only if it ended this long after it: it
# may have been sent before (a control request takes at most connect + read timeouts).
AFTER_PASS_S = CONNECT_TIMEOUT_S + READ_TIMEOUT_S
# A report still due this long after the leader first saw it due, with no live replica
# running it, is made again by the leader.
REPORT_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A drain that passed steps 1 and 2, waiting for step 3."""

    members: frozenset[tuple[str, bool, str | None]]
    drain_gen: int
    passed_at: float  # monotonic


def _fingerprint(view: View) -> frozenset[tuple[str, bool, str | None]]:
    """Who is a member, alive, adopted by whom (not the ETags: counters change them)."""
    return frozenset((m.incarnation, m.live, m.adopted_by) for m in view.members)


def job_id_of(stored: StoredSession, state: str) -> str:
    """The id of the report of `stored`'s current drain ending as `state` (as Reports makes
    it from a Session: its drain starts at the reopening, or the stop, or 0)."""
    drain = stored.redrained_at or stored.stopped_at or 0.0
    return event_id(stored.date_prefix, stored.name, state, repr(drain))


class Leader:
    def __init__(
        self,
        settings: Settings,
        membership: Membership,
        sessions: Sessions,
        reports: Reports,
        adoption: Adoption,
        base_root: Path,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.membership, self.sessions = settings, membership, sessions
        self.reports, self.adoption, self.base_root = reports, adoption, base_root
        self.nfs = adoption.nfs
        self._clock, self._monotonic = clock, monotonic
        self.wanted = FileFilter.from_settings(settings)
        self._candidates: dict[str, _Candidate] = {}
        self._due_since: dict[str, float] = {}
        # (session, drain_gen) -> monotonic time this leader first saw that drain.
        self._draining_since: dict[tuple[str, int], float] = {}
        self.ended = 0
        self.remade = 0

    def __repr__(self) -> str:
        return f"Leader(ended={self.ended} remade={self.remade})"

    @property
    def me(self) -> str:
        return self.membership.incarnation

    async def iteration(self) -> None:
        coordinator = self.membership.coordinator
        view = coordinator.view if coordinator is not None else None
        if coordinator is None or view is None or not coordinator.is_leader():
            # Kept: when this process first saw a drain stays true on its monotonic clock
            # while it is not the leader; forgotten, a leader that misses a pass now and then
            # (a renewal late by a moment) would count every drain's timeout again.
            self._candidates.clear()
            self._due_since.clear()
            return
        if coordinator.state_problem is not None:
            await anyio.to_thread.run_sync(coordinator.repair)
        await self.adoption.leftovers(view)
        doc = self.membership.latest()
        if doc is None:
            return
        draining = {(s.name, s.drain_gen or 0) for s in doc.sessions if s.state == "draining"}
        for gone in set(self._draining_since) - draining:
            del self._draining_since[gone]
        for stored in doc.sessions:
            if stored.state == "draining" and self.membership.valid():
                await self._judge(view, stored)
        await self._remake_due(view, doc)

    # --- drains -----------------------------------------------------------------------------

    async def _judge(self, view: View, stored: StoredSession) -> None:
        name, drain_gen = stored.name, stored.drain_gen or 0
        since = self._draining_since.setdefault((name, drain_gen), self._monotonic())
        timed_out = self._monotonic() - since > self.settings.drain_timeout_s
        if self._quiet_everywhere(view, name, drain_gen):
            if await self._step(view, stored, drain_gen):
                return
        else:
            self._candidates.pop(name, None)
        if timed_out:
            self._candidates.pop(name, None)
            await self._end(stored, "drain_timed_out")

    async def _step(self, view: View, stored: StoredSession, drain_gen: int) -> bool:
        """Steps 2 and 3 of the module docstring; True when the session was ended."""
        name = stored.name
        candidate = self._candidates.get(name)
        if candidate is not None and (
            candidate.drain_gen != drain_gen or candidate.members != _fingerprint(view)
        ):
            candidate = self._candidates.pop(name)
            candidate = None
        if candidate is None:
            before = _fingerprint(view)
            if await self._nothing_left(stored):
                self._candidates[name] = _Candidate(before, drain_gen, time.monotonic())
            return False
        if view.taken_at - candidate.passed_at <= AFTER_PASS_S:
            return False
        del self._candidates[name]
        await self._end(stored, "drained")
        return True

    def _quiet_everywhere(self, view: View, name: str, drain_gen: int) -> bool:
        """Step 1 of the module docstring."""
        need = max(drain_gen, 1)
        for record in view.members:
            if not record.live:
                return False
            if record.incarnation == self.me:
                session = self.sessions.by_name.get(name)
                quiet = 0 if session is None else counters(session).get(QUIET, 0)
            else:
                quiet = record.progress.get(name, {}).get(QUIET, 0)
            if quiet < need:
                return False
        return view.get(self.me) is not None

    async def _nothing_left(self, stored: StoredSession) -> bool:
        """Step 2: the leader's own pass."""
        folder = self.settings.nfs_incoming_dir / stored.name
        scan = await self.nfs.call(lambda: scan_session(folder, self.wanted))
        if scan.problem is not None or scan.files or scan.too_deep or scan.unreadable:
            return False
        root, date, name = self.base_root, stored.date_prefix, stored.name
        return not await self.nfs.call(
            lambda: _held_anywhere(root, date, name), timeout=self.nfs.timeout * 10
        )

    async def _end(self, stored: StoredSession, state: EndedName) -> None:
        """Record the end (with its report due) and queue the report."""
        session = self.sessions.by_name.get(stored.name)
        if session is None:
            return
        job = self.reports.job_for(session, state)
        report = transitions.report_due(
            stored.name,
            state,
            stored,
            job["id"],
            self._clock(),
            job["generation"],
            job["event"] == "session.updated",
        )
        if self.reports.enabled:
            try:
                await self.reports.keep(job)
            except OSError as exc:
                logger.warning("Session %s: report job not written (%s)", stored.name, exc)
                return
        try:
            await self.sessions.end_shared(stored.name, state, stored.drain_start, report)
        except SessionConflict:
            await self._forget(job)
            return
        except CoordError as exc:
            logger.warning("Session %s: end not recorded yet (%s)", stored.name, exc)
            return
        if self.reports.enabled:
            self.reports.queue(job)
        self.ended += 1
        log = logger.info if state == "drained" else logger.error
        log(
            "Session %s %s (judged over %d members)",
            stored.name,
            state,
            len(self.membership.coordinator.view.members)
            if self.membership.coordinator and self.membership.coordinator.view
            else 1,
            extra={"session_name": stored.name},
        )

    async def _forget(self, job: Job) -> None:
        try:
            await self.reports.forget(str(job["id"]))
        except OSError:
            pass  # dropped by its gate when it is found

    # --- reports that nobody is doing --------------------------------------------------------

    async def _remake_due(self, view: View, doc: StateDoc) -> None:
        due = {r.id: r for r in doc.reports}
        for gone in set(self._due_since) - set(due):
            del self._due_since[gone]
        if not due or any(not m.live for m in view.members):
            return
        now = time.monotonic()
        for report_id, report in due.items():
            if self.reports.has(report_id):
                self._due_since.pop(report_id, None)
                continue
            since = self._due_since.setdefault(report_id, now)
            if now - since >= REPORT_GRACE_S:
                await self._remake(report)

    async def _remake(self, report: ReportDue) -> None:
        job: Job = {
            "id": report.id,
            "created": self._clock(),
            "session": report.name,
            "date_prefix": report.date_prefix,
            "state": report.state,
            "started_at": report.started_at,
            "stopped_at": report.stopped_at,
            "finished_at": report.finished_at,
            "excluded": [],
            "not_uploaded": 0,
            "generation": report.generation or int(self._clock() * 1_000_000),
            "event": "session.updated" if report.updated else f"session.{report.state}",
        }
        try:
            await self.reports.keep(job)
        except OSError:
            return
        self.reports.queue(job)
        self.remade += 1
        self._due_since.pop(report.id, None)
        logger.warning("Session %s: its report was still due; made again here", report.name)


def gate(latest: Callable[[], StateDoc | None]) -> Callable[[Job], Verdict]:
    """Reports' gate with other replicas (see cloud/reports): run a job whose end is on
    record, wait for one whose drain is still being judged, drop any other."""

    def verdict(job: Job) -> Verdict:
        doc = latest()
        if doc is None:
            return "wait"
        job_id = str(job.get("id"))
        if any(r.id == job_id for r in doc.reports):
            return "run"
        stored = doc.get(str(job.get("session")))
        if stored is None or stored.date_prefix != job.get("date_prefix"):
            return "drop"
        if stored.state in ("drained", "drain_timed_out"):
            return "run" if job_id_of(stored, stored.state) == job_id else "drop"
        if stored.state == "draining" and job_id_of(stored, str(job.get("state"))) == job_id:
            return "wait"
        return "drop"

    return verdict


def _held_anywhere(root: Path, date: str, name: str) -> bool:
    """Whether any member's tree (or the processing root's own) holds a claimed or parked
    file of session `name` under `date`. Blocking."""
    if not is_session_name(name):
        return False
    bases: list[tuple[str, ...]] = [()] + [
        (OWNERS_DIR, member) for member, is_dir, _ in trees.listdir(root, OWNERS_DIR) if is_dir
    ]
    return any(
        trees.files_below(root, *base, date, name)
        or trees.files_below(root, *base, PARKED_DIR, date, name)
        for base in bases
    )
