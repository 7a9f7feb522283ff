"""Ledger retention: nothing on the share grows for ever. A session's ledger
(`_ledgers/<date>/<session>.jsonl`, what its manifest is written from) is removed once all of
these hold, checked on GC's beat:

    its manifest is in storage   the session is not active or draining under that date, and
                                 no report job for it is due (the job is deleted only after
                                 the manifest was uploaded and the event emitted): neither
                                 in this process nor in any tree's `_reports/` (with replicas
                                 the leader, or an adopter of its tree, holds the job and
                                 writes the manifest from every member's ledger)
    nothing of it is parked      `_failed/<date>/<session>/` holds no file, nor
    or claimed                   `_failed_reasons/<date>/<session>/` (a reason without its file
                                 is a dismissal still to be recorded), and nothing of it is in
                                 `.processing/<date>/<session>/` or `_completed/` (a retry, a
                                 dismissal or a late write would write to the ledger, and a new
                                 manifest would need it whole), in any tree of the share: the
                                 processing root's and every replica's (`owners/<member>/`),
                                 since a manifest is merged from all their ledgers
    its date is over             the date folder is before today (UTC): a session started
                                 again on its date writes on in this ledger, and its next
                                 manifest is written from all of it
    its time has passed          APP_LEDGER_RETENTION_DAYS since its last line (its mtime)

A ledger is looked at again just before it is removed (a line appended meanwhile keeps it).
Only regular files named like a ledger of a valid session name are ever removed, and the date
folder once it is empty. The clock is injected for tests.

Besides its own tree, a process sweeps the trees of replicas that no longer run
(`owners/<member>/`, whatever their tree still holds after adoption: ledgers), as `others`
allows: one replica on a share switched back sweeps the owner trees it found at its start
(never one of a replica started beside it), and of the replicas the leader sweeps those of
members that have had no member blob for a while (replicas/adoption) and the processing root's
own (a single replica's, before) once no single replica runs there (nfs/single_mark). An owner
tree is removed once it holds nothing but empty folders, so no incarnation leaves a folder
behind for ever.
"""

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from nfs_watcher_uploader.constants import (
    COMPLETED_DIR,
    JOB_FILE_MAX,
    LEDGER_SUFFIX,
    LEDGERS_DIR,
    OWNERS_DIR,
    PARKED_DIR,
    PARKED_REASONS_DIR,
    REPORTS_DIR,
)
from nfs_watcher_uploader.coord.names import is_incarnation
from nfs_watcher_uploader.items import is_session_name
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.reading import Unusable, parse_json, read_regular
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.session import today_utc

logger = logging.getLogger(__name__)

DAY_S = 86_400.0
# (date, session) -> True while its ledger may still be needed (read on the event loop).
BusyFn = Callable[[str, str], bool]
# Which trees this process may sweep besides its own, asked on the event loop before each
# sweep: None for none, else a test of a tree's name (an owner tree's member, or "" for the
# processing root's own tree) run off the loop.
OthersFn = Callable[[], Callable[[str], bool] | None]
# A ledger: the tree it is in, its date, its session.
Found = tuple[Path, str, str]


def _no_others() -> Callable[[str], bool] | None:
    return None


class _ReportOf(BaseModel):
    """What a report job (cloud/reports) says of the session it reports."""

    date_prefix: str
    session: str


class LedgerRetention:
    def __init__(
        self,
        layout: Layout,
        nfs: Nfs,
        days: float,
        busy: BusyFn,
        clock: Callable[[], float] = time.time,
        share_root: Path | None = None,
        others: OthersFn = _no_others,
    ) -> None:
        self.layout, self.nfs, self._busy, self._clock = layout, nfs, busy, clock
        # The share's processing root (the trees of every replica are below it).
        self.share_root = share_root or layout.processing_root
        self._others = others
        self.keep_s = days * DAY_S
        self.removed = 0
        self.trees_removed = 0

    def __repr__(self) -> str:
        return f"LedgerRetention(keep_days={self.keep_s / DAY_S:g} removed={self.removed})"

    async def sweep(self) -> int:
        """Remove the ledgers no longer needed; returns how many."""
        now = self._clock()
        cutoff, today = now - self.keep_s, today_utc(lambda: now)
        allowed = self._others()
        trees_ = await self.nfs.call(lambda: self._trees(allowed))
        old = await self.nfs.call(
            lambda: self._old_and_idle(trees_, cutoff, today), timeout=self.nfs.timeout * 10
        )
        done = [(tree, date, name) for tree, date, name in old if not self._busy(date, name)]
        # Each walks trees (every member's, and their report jobs), as the look above does.
        walk = self.nfs.timeout * 10
        removed = (
            await self.nfs.call(lambda: self._remove(done, cutoff), timeout=walk) if done else []
        )
        owners = [t for t in trees_[1:] if t.parent == self.share_root / OWNERS_DIR]
        if owners:
            gone = await self.nfs.call(lambda: self._remove_empty(owners), timeout=walk)
            self.trees_removed += len(gone)
            for tree in gone:
                logger.info("Tree of a replica that no longer runs removed: %s (empty)", tree)
        for _, date, name in removed:
            logger.info(
                "Ledger of session %s (%s) removed: its manifest is in storage and %g days have "
                "passed (APP_LEDGER_RETENTION_DAYS)",
                name,
                date,
                self.keep_s / DAY_S,
                extra={"session_name": name},
            )
        self.removed += len(removed)
        return len(removed)

    def _trees(self, allowed: Callable[[str], bool] | None) -> list[Path]:
        """This process's own tree first, then the others it may sweep. Blocking."""
        own = self.layout.processing_root
        if allowed is None:
            return [own]
        others = [] if own == self.share_root or not allowed("") else [self.share_root]
        return [own, *others] + [
            self.share_root / OWNERS_DIR / member
            for member, is_dir, _ in trees.listdir(self.share_root, OWNERS_DIR)
            if is_dir
            and is_incarnation(member)
            and self.share_root / OWNERS_DIR / member != own
            and allowed(member)
        ]

    def _every_tree(self) -> list[Path]:
        """The processing root's tree and every replica's. Blocking."""
        return [self.share_root] + [
            self.share_root / OWNERS_DIR / member
            for member, is_dir, _ in trees.listdir(self.share_root, OWNERS_DIR)
            if is_dir and is_incarnation(member)
        ]

    def _ledgers(self, tree: Path) -> list[Found]:
        out: list[Found] = []
        for date in trees.date_dirs(tree, LEDGERS_DIR):
            for entry, _, is_file in trees.listdir(tree, LEDGERS_DIR, date):
                name = entry.removesuffix(LEDGER_SUFFIX)
                if name != entry and is_session_name(name) and is_file:
                    out.append((tree, date, name))
        return out

    def _old_and_idle(self, trees_: list[Path], cutoff: float, today: str) -> list[Found]:
        """Ledgers of dates before `today`, older than `cutoff`, with nothing of their session
        parked or claimed in any tree."""
        every = self._every_tree()
        old = [
            (tree, date, name)
            for tree in trees_
            for _, date, name in self._ledgers(tree)
            if date < today
            and self._older(tree, date, name, cutoff)
            and not self._holds_files(every, date, name)
        ]
        reported = self._reported(every) if old else set[tuple[str, str]]()
        return [(tree, date, name) for tree, date, name in old if (date, name) not in reported]

    @staticmethod
    def _reported(every: list[Path]) -> set[tuple[str, str]]:
        """(date, session) of every report job waiting in any tree. A file there that is no
        job (a link, a FIFO, too large, damaged) reports nothing: its owner sets it aside."""
        found: set[tuple[str, str]] = set()
        for root in every:
            fd = trees.open_folder(root, REPORTS_DIR)
            if fd is None:
                continue
            try:
                for name, _, is_file in trees.listdir(root, REPORTS_DIR):
                    if not is_file or not name.endswith(".json"):
                        continue
                    try:
                        raw = read_regular(name, JOB_FILE_MAX, dir_fd=fd)
                        if raw is not None:
                            job = parse_json(raw, _ReportOf)
                            found.add((job.date_prefix, job.session))
                    except (Unusable, FileNotFoundError):
                        continue
            finally:
                os.close(fd)
        return found

    @staticmethod
    def _holds_files(every: list[Path], date: str, name: str) -> bool:
        return any(
            trees.files_below(root, *folder, date, name)
            for root in every
            for folder in ((PARKED_DIR,), (PARKED_REASONS_DIR,), (COMPLETED_DIR,), ())
        )

    @staticmethod
    def _older(tree: Path, date: str, name: str, cutoff: float) -> bool:
        """The ledger is a regular file last written before `cutoff` (never followed)."""
        fd = trees.open_folder(tree, LEDGERS_DIR, date)
        if fd is None:
            return False
        try:
            st = os.stat(f"{name}{LEDGER_SUFFIX}", dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff

    def _remove(self, ledgers: list[Found], cutoff: float) -> list[Found]:
        removed: list[Found] = []
        every = self._every_tree()
        reported = self._reported(every)
        for root, date, name in ledgers:
            if (
                not self._older(root, date, name, cutoff)
                or self._holds_files(every, date, name)
                or (date, name) in reported
            ):
                continue  # written to, something parked or a report due, since it was looked at
            fd = trees.open_folder(root, LEDGERS_DIR, date)
            if fd is None:
                continue
            try:
                os.unlink(f"{name}{LEDGER_SUFFIX}", dir_fd=fd)
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            removed.append((root, date, name))
            trees.prune_empty_dirs(root, lambda d, s: True, LEDGERS_DIR)  # the day's folder
        return removed

    def _remove_empty(self, others: list[Path]) -> list[Path]:
        """The owner trees in `others` removed because nothing but empty folders was left."""
        return [
            tree
            for tree in others
            if trees.remove_empty_tree(self.share_root, OWNERS_DIR, tree.name) and not tree.exists()
        ]
