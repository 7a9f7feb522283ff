"""This process as one of N replicas (APP_COORDINATION=azure): what the service builds and
runs besides what a single replica runs, and the hooks it puts into the parts below.

    own tree   every part works on `<processing>/owners/<incarnation>/` as a single replica
               works on the processing root (claims, completed, parked, ledgers, jobs), so no
               two processes ever rename into one place
    hooks      the watcher offers only the files `Membership.take` gives this member; a claim
               and a commit go only while it is valid (work/context.Replica, the wire's
               commit gate); sessions live in the shared state (`Sessions.shared`), and so
               does the bandwidth override, the limit split over the live members; report
               jobs run once their end is on record (leader.gate)
    loops      the NFS probe its renewals wait on; every second: this member's counters
               published, sessions found through files written to the shared state, the
               bandwidth share; after every listing: adoption, and the leader's work when it
               leads

Start-up calls `join` after storage connected; shutdown `leave` after in-flight files had
their grace (the lease is released, or the blob deleted when nothing is left here).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from nfs_watcher_uploader.cloud.ledger import Sources
from nfs_watcher_uploader.cloud.reports import Reports
from nfs_watcher_uploader.cloud.webhooks import Webhooks
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import LEDGER_SUFFIX, LEDGERS_DIR, OWNERS_DIR
from nfs_watcher_uploader.coord import transitions
from nfs_watcher_uploader.coord.errors import CoordError
from nfs_watcher_uploader.coord.names import is_incarnation
from nfs_watcher_uploader.coord.statedoc import BandwidthOverride
from nfs_watcher_uploader.intake.watcher import Watcher
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.probe import claim_mode
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.replicas import progress
from nfs_watcher_uploader.replicas.adoption import Adoption
from nfs_watcher_uploader.replicas.control import refuse_blind
from nfs_watcher_uploader.replicas.leader import Leader, gate
from nfs_watcher_uploader.replicas.membership import Membership
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.uplink.bandwidth import Bandwidth
from nfs_watcher_uploader.uplink.wire import Meter
from nfs_watcher_uploader.work.context import Replica
from nfs_watcher_uploader.work.pipeline import Pipeline

logger = logging.getLogger(__name__)

PUMP_EVERY_S = 1.0
# How often the adoption loop looks for a new listing.
LISTING_POLL_S = 0.2


def ledger_sources(processing_root: Path) -> Sources:
    """Every ledger of a session: the processing root's own (a single replica's, before) and
    each member tree's (cloud/ledger)."""

    def sources(date: str, name: str) -> list[tuple[Path, list[str]]]:
        leaf = f"{name}{LEDGER_SUFFIX}"
        found = [(processing_root, [LEDGERS_DIR, date, leaf])]
        for member, is_dir, _ in trees.listdir(processing_root, OWNERS_DIR):
            if is_incarnation(member) and is_dir:
                found.append((processing_root, [OWNERS_DIR, member, LEDGERS_DIR, date, leaf]))
        return found

    return sources


class Replicas:
    """Built by the service (before its parts, so that they are given `replica` and the
    shared store), then `wire`d to them."""

    def __init__(
        self,
        settings: Settings,
        incarnation: str,
        nfs: Nfs,
        base: Layout,
        own: Layout,
        on_lost: Callable[[str], None],
    ) -> None:
        self.settings, self.nfs, self.base, self.own = settings, nfs, base, own
        self.membership = Membership(settings, incarnation, nfs, own.processing_root, on_lost)
        self.replica = Replica(valid=self.membership.valid, shared=True)
        self._sessions: Sessions | None = None
        self._bandwidth: Bandwidth | None = None
        self._pipeline: Pipeline | None = None
        self._meter: Meter | None = None
        self.adoption: Adoption | None = None
        self.leader: Leader | None = None
        self.pump_errors = 0
        self._quiet: dict[str, int] = {}
        self._listings = 0

    def __repr__(self) -> str:
        return f"Replicas({self.membership!r} {self.adoption!r} {self.leader!r})"

    @property
    def incarnation(self) -> str:
        return self.membership.incarnation

    def wire(
        self,
        pipeline: Pipeline,
        sessions: Sessions,
        reports: Reports,
        webhooks: Webhooks,
        bandwidth: Bandwidth,
        watcher: Watcher,
        meter: Meter,
    ) -> None:
        """Put the hooks into the parts (see the module docstring)."""
        self._sessions, self._bandwidth = sessions, bandwidth
        self._pipeline, self._meter = pipeline, meter
        watcher.take = self.membership.take
        meter.commit_gate = self.membership.valid
        reports.gate = gate(self.membership.latest)
        reports.on_done = lambda job: sessions.reported(str(job["id"]))
        bandwidth.shared = self._keep_override
        self.adoption = Adoption(
            self.membership,
            self.base.processing_root,
            self.own,
            self.nfs,
            pipeline,
            sessions,
            reports,
            webhooks,
            self.publish,
        )
        self.leader = Leader(
            self.settings,
            self.membership,
            sessions,
            reports,
            self.adoption,
            self.base.processing_root,
        )

    async def join(self, can_read: bool, auth_used: str | None) -> None:
        """Refuse what cannot work; mark the share for replicas (a single replica then
        refuses it); join. Nothing is created before the refusals."""
        refuse_blind(can_read)
        self.membership.client_maker(auth_used)
        root = self.base.processing_root
        await self.nfs.call(lambda: claim_mode(root, True))
        await self.membership.join(auth_used)

    # --- loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.membership.run_probe(), name="nfs-probe")
            tg.create_task(self._every(PUMP_EVERY_S, self.pump), name="replica-pump")
            tg.create_task(self._every(LISTING_POLL_S, self._on_listing), name="adoption")

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except (CoordError, OSError) as exc:  # storage or NFS away: next time
                self.pump_errors += 1
                logger.warning("%s: %s", getattr(step, "__name__", step), exc)
            await asyncio.sleep(seconds)

    async def pump(self) -> None:
        """Every second: counters out, the shared state in (sessions, bandwidth)."""
        self.publish()
        sessions, bandwidth = self._sessions, self._bandwidth
        if sessions is not None:
            sessions.refresh()
            await sessions.publish_pending()
        if bandwidth is not None:
            bandwidth.set_share(self.membership.live_members())
            doc = self.membership.latest()
            if doc is not None:
                override = doc.bandwidth_override
                bandwidth.take_override(None if override is None else (override.rate,))

    async def _on_listing(self) -> None:
        """Roster work once after each new listing (the roster loop lists in its thread): a
        dead member is acted on as soon as a listing shows it, not a loop period later."""
        coordinator = self.membership.coordinator
        if coordinator is None or coordinator.listings == self._listings:
            return
        self._listings = coordinator.listings
        await self.roster_work()

    async def roster_work(self) -> None:
        """Every listing: adoption; then the leader's work, when this member leads."""
        if self.adoption is not None and self.membership.valid():
            await self.adoption.iteration()
        if self.leader is not None and self.membership.valid():
            await self.leader.iteration()

    def sweepable(self) -> Callable[[str], bool] | None:
        """Which trees of others this process's ledger retention may sweep (cloud/retention):
        the leader's, those without a member blob for a lease period, and the processing
        root's own once no single replica runs there (its mark gone or stale: adoption); no
        other member sweeps another's tree."""
        coordinator = self.membership.coordinator
        if self.adoption is None or coordinator is None or not coordinator.is_leader():
            return None
        if not self.membership.valid():
            return None
        gone = self.adoption.long_unowned()
        single_gone = self.adoption.single_gone
        return lambda name: (name == "" and single_gone) or name in gone

    def publish(self, urgent: bool = False) -> int:
        """This member's counters into its blob (at its next renew; at once when urgent, or
        when a session's `quiet` changed: the leader's drains wait on it)."""
        member, sessions = self.membership.member, self._sessions
        if member is None or sessions is None:
            return 0
        found = progress.published(sessions.by_name.values(), self._flight())
        quiet = {name: c.get(progress.QUIET, 0) for name, c in found.items()}
        urgent = urgent or quiet != self._quiet
        self._quiet = quiet
        return member.set_progress(found, urgent)

    def _flight(self) -> Callable[[Session], progress.Counters] | None:
        """A session's files in flight here and its rate (replicas/progress FLIGHT)."""
        pipeline, meter = self._pipeline, self._meter
        if pipeline is None or meter is None:
            return None
        by_session, uplink = pipeline.progress.by_session(), meter.rate()

        def flight(session: Session) -> progress.Counters:
            files = by_session.get(session.name, [])
            if not files and not session.watched:
                return {}
            done = sum(f.done for f in files)
            return {
                progress.FLIGHT_DONE: done,
                progress.FLIGHT_LEFT: sum((f.size or 0) for f in files) - done,
                progress.RATE: int(pipeline.progress.session(session, files, uplink).rate),
            }

        return flight

    async def _keep_override(self, override: tuple[int | None] | None) -> None:
        value = None if override is None else BandwidthOverride(rate=override[0])
        await self.membership.change(lambda doc: transitions.set_bandwidth(doc, value))

    # --- leaving -----------------------------------------------------------------------------

    async def leave(self) -> None:
        """Write the last counters, and release the lease so that peers take over what is
        left at once. The blob stays (dead, its counters still counted) until a peer has
        adopted it and added them to its own: removing it here would take them from the sums
        every replica shows."""
        self.publish()
        await self.membership.leave(delete=False)
