"""The service: builds the components, starts them in order, reports readiness and liveness.

Start, each step tried again with backoff while what fails may heal (`until_ok`):
          probe the share (nfs/probe) -> webhook deliveries (from their outbox) -> load
          sessions -> clear staging -> load the bandwidth override, then keep the limit in force
          -> connect storage -> load the block id key -> workers and session reports ->
          what replicas left on a share switched back to one (their owner trees, into the
          processing root) -> recovery (parked files settled, counters read back) -> watcher
          and GC -> ready.
          A step that cannot heal (CannotStart: a missing incoming folder, two mounts, a
          storage answer no retry changes) ends start-up: `on_fatal` is told why, and the
          process exits with status 1. The API serves from the first moment; /readyz is 503
          (saying which step it waits for) until then. With APP_EXIT_ON_STALL_S, a watchdog
          ends the process once liveness has failed that long (for Docker/compose).
Shutdown: stop intake (watcher, GC) -> in-flight uploads get APP_SHUTDOWN_GRACE_S -> cancel the
          rest (recovered on the next start), start-up steps still retrying, the bandwidth
          limit and the uplink's history -> session reports and deliveries (their jobs stay
          on NFS) -> close the storage client.

With other replicas on the share (APP_COORDINATION=azure, replicas/): every part works in this
process's own tree, `<processing>/owners/<incarnation>/`; start-up marks the share (a single
replica then refuses it), joins the replicas once storage is connected (a credential that may
not read is refused), loads the sessions from the shared state and recovers nothing (a new
incarnation owns nothing: what an earlier one left is adopted like a dead member's); the
replica loops (NFS probe, counters, adoption, the leader) run beside intake; shutdown releases
the lease after in-flight files had their grace, so peers take over the rest at once. A lost
incarnation (its lease taken: it was paused or cut off, and its files were adopted) exits at
once with status 75, and the process manager starts a new one.
"""

import asyncio
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio.to_thread

from nfs_watcher_uploader.backoff import until_ok
from nfs_watcher_uploader.blob.block_ids import load_block_key
from nfs_watcher_uploader.blob.credentials import TokenCredentialFactory
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.delivery import Delivery
from nfs_watcher_uploader.cloud.reports import Reports
from nfs_watcher_uploader.cloud.retention import LedgerRetention
from nfs_watcher_uploader.config import Coordination, Settings
from nfs_watcher_uploader.constants import BLOCK_KEY_FILE, OWNERS_DIR
from nfs_watcher_uploader.coord.errors import ControlUnavailable, IncarnationLost
from nfs_watcher_uploader.coord.names import is_incarnation, new_incarnation
from nfs_watcher_uploader.errors import CannotStart, RetryableError
from nfs_watcher_uploader.intake.watcher import ScanFn, Watcher
from nfs_watcher_uploader.items import SessionStateName
from nfs_watcher_uploader.nfs import copying, moves, opening, scan, single_mark, trees
from nfs_watcher_uploader.nfs.handover import hand_over
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.probe import claim_mode, probe_share
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.redaction import redact
from nfs_watcher_uploader.replicas import progress
from nfs_watcher_uploader.replicas.runtime import Replicas, ledger_sources
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.telemetry import Gauges, Telemetry
from nfs_watcher_uploader.uplink.bandwidth import Bandwidth
from nfs_watcher_uploader.uplink.history import UplinkHistory
from nfs_watcher_uploader.uplink.wire import Meter
from nfs_watcher_uploader.work.context import ALONE, ClaimFn, CopyFn, MoveFn, Seams, StagedHook
from nfs_watcher_uploader.work.dismissals import Dismissals
from nfs_watcher_uploader.work.gc import Chore, GarbageCollector
from nfs_watcher_uploader.work.pipeline import Pipeline
from nfs_watcher_uploader.work.recovery import recover
from nfs_watcher_uploader.work.staging import clear_staging

# Backoff of a start-up step that fails (base, cap in seconds): quick at first, then at most
# every 30 s while NFS or storage is away.
START_UP_RETRY = (1.0, 30.0)
# Exit status when the watchdog ends a stalled process (EX_SOFTWARE).
STALL_EXIT_CODE = 70
# Exit status of a lost incarnation (EX_TEMPFAIL): started again, it joins as a new one.
LOST_EXIT_CODE = 75

logger = logging.getLogger(__name__)


class Service:
    """Everything that runs behind the API, created once per process in the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        telemetry: Telemetry | None = None,
        token_credential: TokenCredentialFactory | None = None,
        on_staged: StagedHook | None = None,
        scan: ScanFn = scan.scan_session,
        claim: ClaimFn = moves.claim,
        move: MoveFn = moves.move,
        copy: CopyFn = copying.copy_and_hash,
        exit_process: Callable[[int], object] = os._exit,
        on_fatal: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is the wall clock of sessions' dates and times and of ledger retention (tests
        move it); the other keyword arguments are test seams too."""
        self.settings = settings
        self.nfs = Nfs(settings.nfs_timeout_s, copy_threads=settings.worker_concurrency)
        self.telemetry = telemetry or Telemetry()
        self._exit = exit_process
        # The share as configured; every part below works in `own`: the processing root
        # itself, or with other replicas this process's own tree in it (replicas/runtime).
        self.share = Layout.from_settings(settings)
        own = settings
        self.replicas: Replicas | None = None
        if settings.coordination is Coordination.AZURE:
            incarnation = new_incarnation()
            own_root = settings.nfs_processing_root / OWNERS_DIR / incarnation
            own = settings.model_copy(update={"nfs_processing_root": own_root})
            self.replicas = Replicas(
                settings, incarnation, self.nfs, self.share, Layout.from_settings(own), self._lost
            )
        layout = Layout.from_settings(own)
        self.delivery = Delivery.from_settings(own, layout, self.nfs)
        if self.delivery.ledger is not None:
            # Also with one replica: a share switched back from replicas keeps their ledgers
            # where they lie (a share that never had replicas has no owner tree to read).
            self.delivery.ledger.sources = ledger_sources(settings.nfs_processing_root)
        # Told of each session's end: its manifest and event are due from then on.
        self.sessions = Sessions(
            own.nfs_processing_root,
            self.nfs,
            clock,
            on_end=self._ended,
            shared=None if self.replicas is None else self.replicas.membership,
        )
        self.bandwidth = Bandwidth.from_settings(own, self.nfs)
        # Every request to storage is metered through the bandwidth bucket.
        self.meter = Meter(self.bandwidth.bucket)
        self.uplink_history = UplinkHistory(self.meter)
        self.storage = Storage(settings, token_credential, self.meter)
        seams = Seams(on_staged, claim, move, copy)
        self.pipeline = Pipeline(
            own,
            self.sessions,
            self.storage,
            self.nfs,
            self.telemetry,
            seams=seams,
            delivery=self.delivery,
            replica=ALONE if self.replicas is None else self.replicas.replica,
        )
        d = self.delivery
        self.reports = Reports(
            own,
            layout,
            self.nfs,
            self.storage,
            d.ledger,
            d.labels,
            d.webhooks,
            self.pipeline.parked.listing,
        )
        self.watcher = Watcher(self.pipeline, self.nfs, scan)
        self.dismissals = Dismissals(
            self.pipeline.parked, d.ledger, self.sessions, self.nfs, self.pipeline.stats
        )
        # Slow chores on GC's beat: parked files removed by hand, ledgers past their retention.
        chores: list[Chore] = [self.dismissals.notice_removed]
        self.retention: LedgerRetention | None = None
        if d.ledger is not None:
            days = settings.ledger_retention_days
            self.retention = LedgerRetention(
                layout,
                self.nfs,
                days,
                self._ledger_needed,
                clock,
                share_root=settings.nfs_processing_root,
                # Alone, the trees replicas left before it started are this process's to
                # sweep (`_take_back`); with replicas, the leader's (replicas/runtime).
                others=self._left_by_replicas if self.replicas is None else self.replicas.sweepable,
            )
            chores.append(self.retention.sweep)
        self.gc = GarbageCollector(
            own,
            layout,
            self.sessions,
            self.nfs,
            self.pipeline.completed,
            self.pipeline.resend_whole,
            chores,
        )
        self.telemetry.observe(
            Gauges(
                queue_depth=self.pipeline.queue.qsize,
                in_flight=lambda: self.pipeline.in_flight,
                parked=self.sessions.parked,
                oldest_waiting_age=self.watcher.oldest_waiting_age,
                last_scan=lambda: self.watcher.last_scan_ok,
                nfs_hung=lambda: self.nfs.abandoned,
                staging_free=lambda: self.gc.staging_free,
                staging_size=lambda: self.gc.staging_size,
                sessions=lambda: Counter(s.state for s in self.sessions.by_name.values()),
                # 0 means unlimited.
                bandwidth_limit=lambda: float(self.bandwidth.bucket.rate or 0),
                webhook_pending=lambda: self.delivery.webhooks.pending,
            )
        )
        if self.replicas is not None:
            self.replicas.wire(
                self.pipeline,
                self.sessions,
                self.reports,
                d.webhooks,
                self.bandwidth,
                self.watcher,
                self.meter,
            )
        self.ready = False
        self.phase = "starting"
        self._rng = random.Random()
        self._run_task: asyncio.Task[None] | None = None
        self._intake: list[asyncio.Task[None]] = []
        self._pipeline_task: asyncio.Task[None] | None = None
        self._bandwidth_task: asyncio.Task[None] | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._mark_task: asyncio.Task[None] | None = None
        # Alone: the owner trees found at start (replicas that stopped before it, README).
        self._taken_back: frozenset[str] = frozenset()
        # Session reports and webhook deliveries: on their own, so that neither can hold up
        # an upload.
        self._outbound: list[asyncio.Task[None]] = []
        self._watchdog: asyncio.Task[None] | None = None
        # Why start-up cannot succeed (None while it can), and who ends the process then.
        self.fatal: str | None = None
        self._on_fatal = on_fatal

    def __repr__(self) -> str:
        replicas = f" {self.replicas!r}" if self.replicas is not None else ""
        return (
            f"Service(phase={self.phase!r} {self.pipeline!r} {self.sessions!r} {self.nfs!r}"
            f"{replicas})"
        )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._run(), name="service")
        self._history_task = asyncio.create_task(self.uplink_history.run(), name="uplink")
        if self.settings.exit_on_stall_s is not None:
            self._watchdog = asyncio.create_task(
                self._watch(self.settings.exit_on_stall_s), name="watchdog"
            )

    async def _watch(self, limit: float) -> None:
        """End the process once liveness has failed for `limit` seconds. Docker and compose
        restart a container that exits (`restart: unless-stopped`), never one that is only
        unhealthy; a hung NFS call cannot be cancelled, so no graceful exit is attempted."""
        failing_since: float | None = None
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            problem = self.liveness()
            if problem is None:
                failing_since = None
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since >= limit:
                logger.critical(
                    "Liveness failing for %.0f s (%s); exiting with %d (APP_EXIT_ON_STALL_S)",
                    now - failing_since,
                    problem,
                    STALL_EXIT_CODE,
                )
                self._exit(STALL_EXIT_CODE)
                return

    async def _run(self) -> None:
        try:
            await self._start_up()
        except CannotStart as exc:
            self.fatal = redact(str(exc))  # it is /readyz's and /healthz's answer
            self.phase = f"cannot start: {self.fatal}"
            logger.critical("Cannot start: %s", self.fatal)
            if self._on_fatal is not None:
                self._on_fatal(self.fatal)
            return
        assert self._pipeline_task is not None
        await asyncio.gather(self._pipeline_task, *self._intake, *self._outbound)

    async def _start_up(self) -> None:
        """Everything up to ready; raises CannotStart when start-up cannot succeed."""
        # First, before anything is read or created on the share: is it there, and can a file
        # be renamed from incoming into processing (the claim)?
        self.phase = "checking the share"
        share, replicas = self.share, self.replicas
        await self._until_ok(lambda: probe_share(share, self.nfs), "check the share")
        if replicas is None:  # a share that replicas use is not for a single one
            await self._until_ok(
                lambda: self.nfs.call(lambda: claim_mode(share.processing_root, False)),
                "check the share's mode",
            )
        self._outbound.append(asyncio.create_task(self.delivery.webhooks.run(), name="webhooks"))
        if replicas is None:  # with replicas, the sessions come from storage (below)
            self.phase = "loading sessions"
            await self._until_ok(self.sessions.load, "load sessions", lambda: self.sessions.loaded)
        # Staging may hold many GiB from before a crash: remove it off the event loop.
        await anyio.to_thread.run_sync(clear_staging, self.pipeline.layout.staging_dir)
        # Before any upload: an override kept across a restart (a metered link) must hold.
        self.phase = "loading the bandwidth override"
        await self._until_ok(self.bandwidth.load, "load the bandwidth override")
        self._bandwidth_task = asyncio.create_task(self.bandwidth.run(), name="bandwidth")
        self.phase = "connecting to storage"
        await self._until_ok(self.storage.connect, "connect to storage")
        if replicas is not None:
            await self._join(replicas)
        # After the connection: a start-up that storage refuses creates nothing on the share.
        self.phase = "loading the block id key"
        await self._until_ok(self._load_block_key, "load the block id key")
        if replicas is None:
            # Before the first claim, and until the last upload: replicas started beside
            # this process (a rolling update to them) leave its files to it.
            await self._touch_single_mark()
            self._mark_task = asyncio.create_task(self._keep_single_mark(), name="single-mark")
        self._pipeline_task = asyncio.create_task(self.pipeline.run(), name="pipeline")
        self._outbound.append(asyncio.create_task(self.reports.run(), name="reports"))
        if replicas is None:  # a new incarnation owns nothing yet: nothing of its own to recover
            self.phase = "taking over what replicas left"
            await self._until_ok(self._take_back, "take over what replicas left")
            self.phase = "recovering"
            await self._until_ok(
                lambda: recover(
                    self.sessions, self.pipeline, self.nfs, self.dismissals.settle_orphans
                ),
                "recover",
            )
        self.watcher.heartbeat = time.monotonic()
        self._intake = [
            asyncio.create_task(self.watcher.run(), name="watcher"),
            asyncio.create_task(self.gc.run(), name="gc"),
        ]
        if replicas is not None:
            self._intake.append(asyncio.create_task(replicas.run(), name="replicas"))
        self.ready = True
        self.phase = "running"
        logger.info("Ready: %r", self)

    async def _keep_single_mark(self) -> None:
        """A single replica's sign of life on the share (nfs/single_mark), touched every few
        seconds; a touch that fails is said once, and tried again."""
        failing = False
        while True:
            await asyncio.sleep(single_mark.TOUCH_EVERY_S)
            failing = not await self._touch_single_mark(quiet=failing)

    async def _touch_single_mark(self, quiet: bool = False) -> bool:
        root = self.settings.nfs_processing_root
        try:
            await self.nfs.call(lambda: single_mark.touch(root))
        except OSError as exc:
            if not quiet:
                logger.warning(
                    "Cannot touch %s (%s): replicas with APP_COORDINATION=azure started "
                    "beside this process would take over its claimed files",
                    root / single_mark.SINGLE_FILE,
                    exc,
                )
            return False
        return True

    async def _remove_single_mark(self) -> None:
        root = self.settings.nfs_processing_root
        try:
            await self.nfs.call(lambda: single_mark.remove(root))
        except OSError as exc:
            logger.warning(
                "Cannot remove %s (%s): replicas take over what is left once it has not "
                "changed for %.0f s",
                root / single_mark.SINGLE_FILE,
                exc,
                single_mark.STALE_S,
            )

    async def _take_back(self) -> None:
        """One replica on a share that replicas used (switched back as README "Running N
        replicas" says, after every replica stopped): the files each left in its owner tree
        go into the processing root, never over a file, for recovery to queue."""
        root = self.settings.nfs_processing_root

        found: set[str] = set()

        def take() -> tuple[int, int]:
            moved = left = 0
            for member, is_dir, _ in trees.listdir(root, OWNERS_DIR):
                if is_dir and is_incarnation(member):
                    found.add(member)
                    handed = hand_over(root, [OWNERS_DIR, member], root, lambda: True)
                    moved, left = moved + handed.moved, left + handed.left
            return moved, left

        moved, left = await self.nfs.call(take, timeout=self.nfs.timeout * 10)
        self._taken_back = frozenset(found)
        if moved or left:
            logger.warning(
                "Took over %d files that replicas left in %s (%d wait: a file of that name is "
                "in the processing root; moved at the next start)",
                moved,
                root / OWNERS_DIR,
                left,
            )

    async def _join(self, replicas: Replicas) -> None:
        """Join the replicas on this share, then take the sessions from the shared state."""
        self.phase = "joining the replicas"
        storage = self.storage
        try:
            await until_ok(
                lambda: replicas.join(storage.can_read, storage.auth_used),
                "join the replicas",
                retry=START_UP_RETRY,
                rng=self._rng,
                log=logger,
                retryable=(OSError, RetryableError, ControlUnavailable),
                waiting=lambda error: setattr(self, "phase", f"waiting to join: {error}"),
            )
        except IncarnationLost as exc:
            self._lost(str(exc))
            return
        self.phase = "loading sessions"
        await self._until_ok(self.sessions.load, "load sessions", lambda: self.sessions.loaded)

    def _lost(self, why: str) -> None:
        """This incarnation is over (coord/member): exit at once; what it held is adopted."""
        self.ready = False
        self.phase = f"lost: {why}"
        logger.critical(
            "This replica's membership is lost (%s); exiting with %d to start as a new one",
            why,
            LOST_EXIT_CODE,
        )
        self._exit(LOST_EXIT_CODE)

    async def _ended(self, session: Session, state: SessionStateName) -> None:
        await self.reports.ended(session, state)

    def _ledger_needed(self, date_prefix: str, name: str) -> bool:
        """The session's manifest may still be written from its ledger under that date."""
        session = self.sessions.by_name.get(name)
        watched = session is not None and session.watched and session.date_prefix == date_prefix
        return watched or self.reports.due(date_prefix, name)

    async def _load_block_key(self) -> None:
        # One key for the share, whichever replica made it: a replica that takes a file over
        # then finds the blocks its first uploader staged.
        path = self.share.processing_root / BLOCK_KEY_FILE
        self.storage.blocks.key = await self.nfs.call(lambda: load_block_key(path))

    async def _until_ok(
        self,
        step: Callable[[], Awaitable[object]],
        what: str,
        done: Callable[[], bool] = lambda: True,
    ) -> None:
        """Repeat a start-up step with backoff until it succeeds; the API keeps serving and
        /readyz says what it waits for."""

        def waiting(error: str) -> None:
            self.phase = f"waiting to {what}: {error}"

        await until_ok(
            step,
            what,
            retry=START_UP_RETRY,
            rng=self._rng,
            log=logger,
            retryable=(OSError, RetryableError),
            done=done,
            waiting=waiting,
        )

    async def shutdown(self) -> None:
        self.ready = False
        self.phase = "stopping"
        if self._watchdog is not None:
            self._watchdog.cancel()
        # 1. Stop intake: no new scans, no GC.
        for task in self._intake:
            task.cancel()
        await asyncio.gather(*self._intake, return_exceptions=True)
        # 2. Let in-flight files finish within the grace period, then cancel them.
        if self._pipeline_task is not None:
            await self.pipeline.shutdown(self.settings.shutdown_grace_s)
        # 3. Stop whatever else is running (startup retries included).
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        for task in (self._pipeline_task, self._bandwidth_task, self._history_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # 3b. Nothing is uploaded any more: replicas may take over what is left at once.
        if self._mark_task is not None:
            self._mark_task.cancel()
            await asyncio.gather(self._mark_task, return_exceptions=True)
            await self._remove_single_mark()
        # 4. Stop session reports and webhook deliveries: what is not done stays on NFS.
        for task in self._outbound:
            task.cancel()
        await asyncio.gather(*self._outbound, return_exceptions=True)
        # 4b. With replicas: release the lease, so that peers take over what is left at once.
        if self.replicas is not None:
            try:
                await self.replicas.leave()
            except Exception:
                logger.exception("Leaving the replicas failed; the lease lapses instead")
        # 5. Close the storage client.
        await self.storage.close()
        logger.info("Stopped: %r", self)

    # --- health --------------------------------------------------------------------------

    def liveness(self) -> str | None:
        """None when healthy, else why not. Reads timestamps only; touches no NFS."""
        if self.fatal is not None:
            return f"cannot start: {self.fatal}"
        task = self._run_task
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            return f"service loop ended: {exc!r}" if exc else "service loop ended"
        limit = self.settings.liveness_timeout_s
        if self.ready and (age := time.monotonic() - self.watcher.heartbeat) > limit:
            return f"watcher has not completed a scan for {age:.0f} s"
        if (stall := self.pipeline.stalled_for()) > limit:
            return f"a worker has made no progress for {stall:.0f} s"
        return None

    # --- operations the API calls ----------------------------------------------------------

    def totals(self, session: Session) -> dict[str, int] | None:
        """With other replicas: `session`'s counters summed over them (None: alone)."""
        replicas = self.replicas
        if replicas is None:
            return None
        coordinator = replicas.membership.coordinator
        view = coordinator.view if coordinator is not None else None
        mine = {session.name: progress.counters(session)}
        return progress.summed(view, replicas.incarnation, mine, session.name)

    def uploaded_elsewhere(self) -> int:
        """Files the other replicas counted as uploaded (their published sessions)."""
        replicas = self.replicas
        coordinator = replicas.membership.coordinator if replicas is not None else None
        view = coordinator.view if coordinator is not None else None
        if replicas is None or view is None:
            return 0
        return sum(
            counts.get("uploaded", 0)
            for record in progress.counted(view, replicas.incarnation)
            for counts in record.progress.values()
        )

    async def start_session(self, name: str) -> Session:
        """Start watching `incoming/<name>/`, creating it if needed (never the incoming folder
        itself: a missing one is an unmounted share, FileNotFoundError). Raises NotOurs when it
        exists but is not a real folder (a symbolic link to a folder elsewhere, say)."""
        layout = self.pipeline.layout

        def prepare(name: str, date_prefix: str) -> None:
            folder = layout.session_folder(name)
            folder.mkdir(exist_ok=True)
            os.close(opening.open_dir(folder, []))
            (layout.processing_root / date_prefix / name).mkdir(parents=True, exist_ok=True)

        session = await self.sessions.start(name, prepare)
        logger.info("Session %s started", name, extra={"session_name": name})
        return session

    async def stop_session(self) -> Session | None:
        session = await self.sessions.stop()
        if session is not None:
            logger.info(
                "Session %s stopped; draining", session.name, extra={"session_name": session.name}
            )
        return session

    def _left_by_replicas(self) -> Callable[[str], bool]:
        """Which owner trees this process, alone, may sweep (cloud/retention): those found at
        its start. A tree that appeared since is a replica's started beside it (a rolling
        update to replicas): its sessions, report jobs and ledgers are that replica's own."""
        taken_back = self._taken_back
        return lambda name: name in taken_back
