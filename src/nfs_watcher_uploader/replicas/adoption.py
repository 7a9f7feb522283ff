"""Taking over what a dead member left: its claimed, committed and parked files, its report
jobs and webhook events, renamed one by one into this member's own tree (nfs/handover) and
queued here as recovery queues a previous run's (work/recovery).

    adopt     every listing, once this member is steady (valid without a gap for a lease
              period: after an outage every replica shares, nobody adopts anybody): the
              orphans of the listing, each by a write conditional on its listed ETag (one
              adopter wins, coord/roster); what the dead member had counted is added to this
              member's counters, once (the first adoption of it)
    take      each member this one adopted: its tree handed over, what came queued; a place
              taken here (a file of the same name this member holds) waits for a later pass
    remove    a member whose tree held no work file in two passes NFS_TIMEOUT apart (a rename
              it sent before it died may still land) is removed, If-Match on the ETag of the
              adoption, after this member's own counters (its `quiet` flags) are in its blob:
              the leader's drain never sees the dead member gone before it sees the files here
    leftovers (the leader) trees with no member blob at all: a member removed before a late
              rename of its own landed, one that died before its blob was written, and the
              trees a single replica left at the processing root (APP_COORDINATION=none before);
              that one only once no single replica runs (nfs/single_mark: its mark is gone or
              has not changed for a while), since a rolling update to replicas starts them
              beside it

Losing validity stops every step (hand_over asks before each rename).
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from nfs_watcher_uploader.cloud.reports import Reports
from nfs_watcher_uploader.cloud.webhooks import Webhooks
from nfs_watcher_uploader.constants import OWNERS_DIR
from nfs_watcher_uploader.coord.constants import LEASE_S
from nfs_watcher_uploader.coord.names import is_incarnation
from nfs_watcher_uploader.coord.roster import MemberRecord, View
from nfs_watcher_uploader.nfs import single_mark, trees
from nfs_watcher_uploader.nfs.handover import Handed, hand_over, work_left
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.replicas.membership import Membership
from nfs_watcher_uploader.replicas.progress import inherit
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.work.pipeline import Pipeline

logger = logging.getLogger(__name__)

# How long removing a member waits for this member's counters to be in its blob.
FLUSH_TIMEOUT_S = 10.0
# Writes this member's counters (replicas/runtime: `publish(urgent)`); returns the number of
# the set, for Member.wait_written.
Publish = Callable[[bool], int]


class Adoption:
    def __init__(
        self,
        membership: Membership,
        base_root: Path,
        layout: Layout,
        nfs: Nfs,
        pipeline: Pipeline,
        sessions: Sessions,
        reports: Reports,
        webhooks: Webhooks,
        publish: Publish,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self.membership, self.base_root, self.layout = membership, base_root, layout
        self.nfs, self.pipeline, self.sessions = nfs, pipeline, sessions
        self.reports, self.webhooks = reports, webhooks
        self._publish = publish
        # Member -> when a pass first found its tree empty (monotonic).
        self._emptied: dict[str, float] = {}
        # Trees with no member blob -> when that was first seen (monotonic).
        self._unowned: dict[str, float] = {}
        # The single replica's mark as last seen, and when it last changed (monotonic).
        self._single: tuple[single_mark.Signature, float] | None = None
        # The last look found no single replica running (its mark gone or stale): the tree
        # at the processing root is the replicas' to take over and to sweep (cloud/retention).
        self.single_gone = False
        self.adopted = 0
        self.files_taken = 0
        self.removed = 0

    def __repr__(self) -> str:
        return (
            f"Adoption(adopted={self.adopted} files_taken={self.files_taken} "
            f"removed={self.removed})"
        )

    @property
    def me(self) -> str:
        return self.membership.incarnation

    async def iteration(self) -> None:
        """Adopt the orphans of the last listing, then go on with every member adopted."""
        coordinator = self.membership.coordinator
        if coordinator is None:
            return
        before = coordinator.view
        won = await anyio.to_thread.run_sync(coordinator.adopt)
        for record in won:
            self.adopted += 1
            old = before.get(record.incarnation) if before is not None else None
            if old is not None and old.adopted_by is None:  # its first adoption
                self._inherit(record)
        view = coordinator.view
        mine = {r.incarnation: r for r in view.adopted_by(self.me)} if view else {}
        mine |= {r.incarnation: r for r in won}  # with the ETag of the adoption
        for record in mine.values():
            if not self.membership.valid():
                return
            await self._take(record)

    def _inherit(self, record: MemberRecord) -> None:
        for name, theirs in record.progress.items():
            session = self.sessions.by_name.get(name)
            if session is not None:
                inherit(session, theirs)

    async def _take(self, record: MemberRecord) -> None:
        dead = record.incarnation
        handed = await self._hand_over([OWNERS_DIR, dead])
        if handed.moved or handed.left or handed.stopped:
            self._emptied.pop(dead, None)
            if handed.moved:
                logger.warning(
                    "Took over %d files of member %s (%d claimed, %d committed, %d parked, "
                    "%d jobs); %d wait for a later pass",
                    handed.moved,
                    dead,
                    len(handed.claimed),
                    len(handed.completed),
                    len(handed.parked),
                    handed.jobs,
                    handed.left,
                )
            return
        first = self._emptied.setdefault(dead, self._monotonic())
        if self._monotonic() - first < self.nfs.timeout:
            return
        await self._remove(record)

    async def _remove(self, record: MemberRecord) -> None:
        """Remove an emptied member's blob once this member's counters are written."""
        coordinator, member = self.membership.coordinator, self.membership.member
        if coordinator is None or member is None:
            return
        seq = self._publish(True)
        written = await anyio.to_thread.run_sync(member.wait_written, seq, FLUSH_TIMEOUT_S)
        if not written or not self.membership.valid():
            return
        if await anyio.to_thread.run_sync(coordinator.remove, record):
            self.removed += 1
            logger.info("Removed member %s: everything it had is taken over", record.incarnation)
        self._emptied.pop(record.incarnation, None)

    async def _hand_over(self, source: list[str]) -> Handed:
        valid, root, own = self.membership.valid, self.base_root, self.layout.processing_root
        handed = await self.nfs.call(
            lambda: hand_over(root, source, own, valid), timeout=self.nfs.timeout * 10
        )
        await self._queue(handed)
        return handed

    async def _queue(self, handed: Handed) -> None:
        """Queue what was taken over, as recovery queues what a previous run left."""
        for item in handed.parked:
            self.sessions.for_item(item).found_parked(item.rel)
        for item in handed.claimed:
            self.sessions.for_item(item)
            self.pipeline.put(item)
        for item in handed.completed:
            self.pipeline.put(self.layout.as_completed(item))
        if handed.jobs:
            await self.reports.take_over()
            await self.webhooks.take_over()
        if handed.moved:
            self.files_taken += handed.moved
            self._publish(True)

    # --- the leader: trees nobody owns ------------------------------------------------------

    async def leftovers(self, view: View) -> None:
        """Take over the trees that have no member blob (see the module docstring): a tree
        first seen without one is taken only once it has had none for a lease period, so a
        member that is joining right now is never robbed."""
        members = {m.incarnation for m in view.members}
        root = self.base_root / OWNERS_DIR
        names = await self.nfs.call(
            lambda: [name for name, is_dir, _ in trees.listdir(root) if is_dir]
        )
        now = self._monotonic()
        seen = {n for n in names if is_incarnation(n) and n != self.me and n not in members}
        for gone in set(self._unowned) - seen:
            del self._unowned[gone]
        for name in sorted(seen):
            since = self._unowned.setdefault(name, now)
            if now - since < LEASE_S or not self.membership.valid():
                continue
            handed = await self._hand_over([OWNERS_DIR, name])
            if handed.moved:
                logger.warning("Took over %d files left by member %s", handed.moved, name)
        legacy = await self.nfs.call(lambda: work_left(self.base_root, []))
        if legacy or not self.single_gone:
            self.single_gone = await self._no_single_replica()
        if legacy and self.single_gone and self.membership.valid():
            handed = await self._hand_over([])
            logger.warning(
                "Took over %d files a single replica left in %s", handed.moved, self.base_root
            )

    def long_unowned(self) -> frozenset[str]:
        """The trees the leader's last passes found with no member blob for a lease period."""
        now = self._monotonic()
        return frozenset(n for n, since in self._unowned.items() if now - since >= LEASE_S)

    async def _no_single_replica(self) -> bool:
        """Whether no process with APP_COORDINATION=none still runs on this share: its mark
        (nfs/single_mark) is gone, or has looked the same for STALE_S on this clock."""
        root = self.base_root
        seen = await self.nfs.call(lambda: single_mark.signature(root))
        now = self._monotonic()
        if seen is None:
            self._single = None
            return True
        if self._single is None or self._single[0] != seen:
            if self._single is None:
                logger.warning(
                    "A single replica (APP_COORDINATION=none) seems to run on this share "
                    "(%s/%s): the files it claimed are left to it until its mark is gone or "
                    "has not changed for %.0f s",
                    root,
                    single_mark.SINGLE_FILE,
                    single_mark.STALE_S,
                )
            self._single = (seen, now)
            return False
        return now - self._single[1] >= single_mark.STALE_S
