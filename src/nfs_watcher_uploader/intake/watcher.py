"""The watcher: finds files that are completely written and offers them to the workers.

A file is ready when two consecutive scans saw the same (size, mtime) and its mtime is at least
APP_MIN_FILE_AGE_S old. On NFS, attributes are cached for `actimeo` seconds, so a growing file
can look unchanged for that long: APP_MIN_FILE_AGE_S must exceed the mount's actimeo.

Every watched session (the active one, and stopped ones still draining) is scanned each poll,
down to MAX_DEPTH levels of subfolders. A draining session becomes `drained` once a scan made
after the stop finds no file anywhere below its incoming folder (and no folder too deep to
scan) and none of its files is queued, in flight, retrying or parked. Entries that are not
regular files (symbolic links, FIFOs) are never taken: they are reported and do not count.

An active session whose files are all too young to claim, and none of whose folders gained,
lost or renamed an entry since its last scan (one stat per folder says so), is not listed again
until its first file comes of age: nothing a scan could find would change what is done. It is
listed anyway at least every FULL_LIST_S, since on NFS a folder's attributes may be cached. A
file old enough to claim (or one whose attributes are unknown, or dated ahead) is looked at
every poll, as before: the stability rule is unchanged.

Every stopped session ends: one that cannot drain (a file NFS cannot describe, a folder
replaced by a link, a scan that failed) is `drain_timed_out` once APP_DRAIN_TIMEOUT_S has
passed, whatever its scan found.

With other replicas on the share (APP_COORDINATION=azure) the sessions come from the shared
state (`Sessions.refresh`, at the start of each pass), a ready file is offered only if `take`
says this member should claim it (rendezvous, or stable past APP_STEAL_AFTER_S), and a draining
session is not ended here: the pass notes whether it found the session quiet here
(`Session.quiet_gen`), and the leader (replicas/leader) judges the drain over every member.
Idle skipping hides nothing from them: a file another member should take is old enough to
claim, so its session is listed every poll and the file's unchanged time (`since`) goes on
counting towards the steal; a draining session is never skipped.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.config import UploadOrder
from nfs_watcher_uploader.constants import FULL_LIST_S
from nfs_watcher_uploader.intake.filters import FileFilter
from nfs_watcher_uploader.items import WorkItem, printable
from nfs_watcher_uploader.nfs import scan, trees
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.scan import Fingerprint, Known, Scan, ScanMap, Wanted
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.work.order import Key, sort_key
from nfs_watcher_uploader.work.pipeline import Pipeline

logger = logging.getLogger(__name__)

ScanFn = Callable[[Path, Wanted, Known, int], Scan]
# (session, path below its folder, seconds it has looked unchanged) -> whether to offer it.
TakeFn = Callable[[str, str, float], bool]


def stable_files(
    previous: Known,
    current: Known,
    now: float,
    min_age: float,
    skip: Container[str] = (),
    order: UploadOrder = UploadOrder.OLDEST,
    since: Mapping[str, float] | None = None,
) -> list[str]:
    """Names in `current` that are ready to claim, in `order` (oldest first by default). A file
    whose mtime is in the future (the writer's clock is ahead) is judged by how long it has
    looked unchanged here, `since[name]`, instead. A file whose attributes are unknown (None)
    is not ready; any mtime is a time (before 1970 too)."""
    ready: list[tuple[Key, str]] = []
    for name, seen in current.items():
        if seen is None or name in skip or previous.get(name) != seen:
            continue
        mtime_ns = seen[1]
        age = now - mtime_ns / 1e9
        if age < 0 and since is not None:
            age = now - since.get(name, now)
        if age < min_age:
            continue
        ready.append((sort_key(order, name, mtime_ns), name))
    ready.sort()
    return [name for _, name in ready]


@dataclass(frozen=True, slots=True)
class _Quiet:
    """What a session's last scan tells about the next polls: its folders' attributes, when it
    listed them (monotonic), and until when no file of it can come of age (wall clock)."""

    folders: dict[str, Fingerprint]
    listed: float
    until: float


class Watcher:
    """Scans each watched session's incoming folder once per poll interval."""

    def __init__(
        self,
        pipeline: Pipeline,
        nfs: Nfs,
        scan: ScanFn = scan.scan_session,
        clock: Callable[[], float] = time.time,
        full_list_s: float = FULL_LIST_S,
    ) -> None:
        self.pipeline = pipeline
        self.settings, self.sessions = pipeline.settings, pipeline.sessions
        self.nfs = nfs
        self._scan = scan
        self.wanted = FileFilter.from_settings(self.settings)
        self._clock = clock
        self._previous: dict[str, ScanMap] = {}
        # Per session, when each file was first seen as it is now (seconds, the clock's).
        self._since: dict[str, dict[str, float]] = {}
        # Per session, the names the last scan found dated after it (see `_scan_session`).
        self._ahead: dict[str, tuple[int, list[str]]] = {}
        # Which ready files this replica offers (all of them when it is alone).
        self.take: TakeFn | None = None
        self.heartbeat = time.monotonic()
        self.last_scan_ok: float | None = None
        self.scan_errors = 0
        # When the oldest file waiting to be claimed was last written (seconds), per session.
        self._oldest: dict[str, float] = {}
        # Sessions that need no listing at the next polls if their folders are unchanged.
        self._quiet: dict[str, _Quiet] = {}
        self._full_list_s = full_list_s
        self.scans = self.quiet_polls = 0
        # The generation of the shared state this pass began with (APP_COORDINATION=azure).
        self._pass_gen = 0

    def __repr__(self) -> str:
        return (
            f"Watcher(sessions={list(self._previous)} scans={self.scans} "
            f"quiet_polls={self.quiet_polls} scan_errors={self.scan_errors})"
        )

    def oldest_waiting_age(self) -> float | None:
        """Seconds since the oldest unclaimed file was last modified (None when none waits)."""
        if not self._oldest:
            return None
        return max(0.0, self._clock() - min(self._oldest.values()))

    async def run(self) -> None:
        while True:
            await self.scan_once()
            await asyncio.sleep(self.settings.poll_interval_s)

    async def scan_once(self) -> None:
        """One pass over every watched session."""
        self.sessions.refresh()
        self._pass_gen = self.sessions.applied_gen
        watched = self.sessions.watched()
        for gone in self._previous.keys() - {s.name for s in watched}:
            del self._previous[gone]
            self._oldest.pop(gone, None)
            self._since.pop(gone, None)
            self._ahead.pop(gone, None)
            self._quiet.pop(gone, None)
        healthy = True
        # With the queue full nothing could be offered: skip the scan. The next comparison then
        # spans a longer interval, which only makes "unchanged" a stronger sign of "complete".
        if not self.pipeline.queue.full():
            for session in watched:
                healthy &= await self._scan_session(session)
        if healthy:
            self.heartbeat = time.monotonic()
            self.last_scan_ok = self._clock()

    async def _scan_session(self, session: Session) -> bool:
        folder = self.pipeline.layout.session_folder(session.name)
        started = self._clock()
        if await self._still_quiet(session, folder, started):
            self.quiet_polls += 1
            return True
        self.scans += 1
        listed = time.monotonic()
        wanted = self.wanted
        previous = self._previous.get(session.name, {})
        young_ns = int((started - self.settings.min_file_age_s) * 1e9)
        # A file dated in the future is young for ever: it must be looked at every time. Only
        # names dated after the previous scan can be (a dict of 100,000 is not copied for none).
        now_ns = int(started * 1e9)
        then, ahead = self._ahead.get(session.name, (0, []))
        known: Known
        if now_ns < then:  # the clock went back: any name may be dated ahead now
            known = {rel: seen for rel, seen in previous.items() if seen and seen[1] <= now_ns}
        elif ahead := {rel for rel in ahead if (previous.get(rel) or (0, 0))[1] > now_ns}:
            known = {rel: seen for rel, seen in previous.items() if rel not in ahead}
        else:
            known = previous
        try:
            scan = await self.nfs.call(lambda: self._scan(folder, wanted, known, young_ns))
        except Exception as exc:  # NFS failed, or a bug: this session's scan, not the watcher
            self.scan_errors += 1
            logger.warning(
                "Scan of %s failed: %s",
                folder,
                exc,
                exc_info=not isinstance(exc, OSError),
                extra={"session_name": session.name},
            )
            await self._judge_drain(session, None, started)
            return False
        if not self.settings.allow_hard_links:
            for rel, links in scan.linked.items():
                del scan.files[rel]
                scan.ignored[rel] = f"a file with {links} hard links (APP_ALLOW_HARD_LINKS)"
        current = scan.files
        self._previous[session.name] = current
        since, future, quiet_until = self._look(session, previous, current, started)
        self._quiet.pop(session.name, None)
        if scan.folders and scan.problem is None and not scan.unreadable:
            self._quiet[session.name] = _Quiet(scan.folders, listed, quiet_until)
        ready = stable_files(
            previous,
            current,
            started,
            self.settings.min_file_age_s,
            session.busy(),
            self.settings.upload_order,
            since,
        )
        self._offer(session, ready, current, since, started)
        for level, text in session.observe(scan, future):
            logger.log(level, "%s", printable(text), extra={"session_name": session.name})
        await self._judge_drain(session, scan, started)
        return True

    async def _judge_drain(self, session: Session, scan: Scan | None, started: float) -> None:
        """After a pass (`scan` None: it failed): alone, whether a draining session has ended
        (a stopped session ends even if its scans fail: it times out); with other replicas,
        whether it was quiet here (a failed scan is not: the leader judges the drain)."""
        if self.sessions.shared is not None:
            if scan is None:
                session.quiet_gen = 0
            else:
                await self._note_quiet(session, scan)
        elif session.state == "draining":
            await self._check_drain(session, scan, started)

    def _look(
        self, session: Session, previous: ScanMap, current: ScanMap, now: float
    ) -> tuple[dict[str, float], list[str], float]:
        """One pass over what a scan found (it may be 100,000 files, every poll): when each file
        was first seen as it is now, which are dated more than a second ahead (returned), which
        are dated after now at all (for the next scan), when the oldest file not in progress
        was last written, and until when every file is too young to claim (returned; now when
        one is not, or its attributes are unknown or ahead of the clock)."""
        before = self._since.get(session.name, {})
        busy = session.busy()
        now_ns = int(now * 1e9)
        young_ns = int((now - self.settings.min_file_age_s) * 1e9)
        earliest = now_ns  # the earliest mtime of the files, all young (else math.inf)
        since: dict[str, float] = {}
        future: list[str] = []
        ahead: list[str] = []
        oldest = math.inf
        for rel, seen in current.items():
            first = before.get(rel, now) if previous.get(rel) == seen else now
            since[rel] = first
            if seen is None:  # attributes unknown this time: looked at every poll
                earliest = -math.inf
                if rel not in busy:
                    oldest = min(oldest, first)
                continue
            mtime = seen[1]
            if mtime > now_ns:
                ahead.append(rel)
                if mtime > now_ns + 10**9:
                    future.append(rel)
            if not young_ns < mtime <= now_ns:  # old enough or ahead: looked at every poll
                earliest = -math.inf
            elif mtime < earliest:
                earliest = mtime
            if rel not in busy:
                oldest = min(oldest, mtime / 1e9, first)
        self._since[session.name] = since
        self._ahead[session.name] = (now_ns, ahead)
        if oldest < math.inf:
            self._oldest[session.name] = oldest
        else:
            self._oldest.pop(session.name, None)
        return since, future, earliest / 1e9 + self.settings.min_file_age_s

    async def _still_quiet(self, session: Session, folder: Path, now: float) -> bool:
        """True when a scan of this active session now could find nothing to act on: every
        file it had was too young to claim and still is, its folders' attributes are as they
        were, and it was listed less than FULL_LIST_S ago."""
        quiet = self._quiet.get(session.name)
        if quiet is None or session.state != "active" or now >= quiet.until:
            return False
        if time.monotonic() - quiet.listed >= self._full_list_s:
            return False
        try:
            return await self.nfs.call(lambda: scan.unchanged(folder, quiet.folders))
        except OSError:
            return False

    def _offer(
        self,
        session: Session,
        names: Iterable[str],
        seen: ScanMap,
        since: Mapping[str, float],
        now: float,
    ) -> None:
        take = self.take
        for rel in names:
            if take is not None and not take(session.name, rel, now - since.get(rel, now)):
                continue  # another member's, by rendezvous, and not yet stale
            item = WorkItem(session.name, session.date_prefix, rel, False, seen=seen[rel])
            if not self.pipeline.offer(item):
                break  # queue full: the rest are offered on a later scan

    async def _requeue_strays(self, session: Session) -> int:
        """Claimed files of the session that no work is pending for (a claim whose reply was
        lost and never retried, say): queue them, so `drained` never hides one. Returns how
        many were queued."""
        root = self.pipeline.layout.processing_root
        folder = root / session.date_prefix / session.name
        try:
            strays = await self.nfs.call(
                lambda: trees.files_below(root, session.date_prefix, session.name)
            )
        except OSError as exc:
            logger.warning("Cannot list %s: %s", folder, exc, extra={"session_name": session.name})
            return 1  # not drained before it could look
        queued = 0
        for rel in strays:
            item = WorkItem(session.name, session.date_prefix, rel, claimed=True)
            queued += self.pipeline.put(item)
        if queued:
            logger.warning(
                "Session %s: %d claimed files were not in progress; uploading them first",
                session.name,
                queued,
                extra={"session_name": session.name},
            )
        return queued

    async def _note_quiet(self, session: Session, scan: Scan) -> None:
        """With other replicas: whether this pass, begun after this member had seen the state
        of generation `_pass_gen`, found nothing of a draining session here: nothing in
        incoming, nothing in progress, parked or left claimed in this member's tree."""
        quiet = (
            session.state == "draining"
            and scan.problem is None
            and self._pass_gen >= session.drain_gen
            and not (scan.files or scan.too_deep or scan.unreadable)
            and not session.pending
            and not session.parked
        )
        if quiet and await self._requeue_strays(session):
            quiet = False
        session.quiet_gen = self._pass_gen if quiet and not session.pending else 0

    async def _check_drain(self, session: Session, scan: Scan | None, scanned_at: float) -> None:
        """Drained when a scan made after the stop finds nothing left anywhere; timed out when
        APP_DRAIN_TIMEOUT_S has passed since the stop, whatever the scan found, or if it could
        not be made (`scan` None): every stopped session ends."""
        extra = {"session_name": session.name}
        stopped = session.drain_start
        if scanned_at <= stopped:
            return
        # What is still in incoming, or could not be looked at.
        left = scan is None or scan.problem or scan.files or scan.too_deep or scan.unreadable
        if not left and not session.pending and not session.parked:
            if await self._requeue_strays(session):
                return
            if not session.pending and not session.parked:  # nothing came up meanwhile
                logger.info("Session %s drained", session.name, extra=extra)
                if scan is not None and scan.excluded:
                    text = (
                        f"drained; {len(scan.excluded)} excluded files stay in incoming, "
                        "not uploaded (APP_INCLUDE, APP_EXCLUDE)"
                    )
                    session.notice(text)
                    logger.warning("Session %s %s", session.name, text, extra=extra)
                await self.sessions.finish(session, "drained")
        elif self._clock() - stopped > self.settings.drain_timeout_s:
            found = "its folder could not be scanned" if scan is None else scan.problem
            logger.error(
                "Session %s did not drain within %.0f s: %d waiting, %d pending, %d parked, "
                "%d folders too deep, %d unreadable%s; left in place",
                session.name,
                self.settings.drain_timeout_s,
                len(scan.files) if scan else 0,
                len(session.pending),
                len(session.parked),
                len(scan.too_deep) if scan else 0,
                len(scan.unreadable) if scan else 0,
                f" ({found})" if found else "",
                extra={"session_name": session.name},
            )
            await self.sessions.finish(session, "drain_timed_out")
