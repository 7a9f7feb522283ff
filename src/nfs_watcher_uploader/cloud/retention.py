"""Ledger retention: nothing on the share grows for ever. A session's ledger
(`_ledgers/<date>/<session>.jsonl`, what its manifest is written from) is removed once all of
these hold, checked on GC's beat:

    its manifest is in storage   the session is not active or draining under that date, and
                                 no report job for it is due (the job is deleted only after
                                 the manifest was uploaded and the event emitted)
    nothing of it is parked      `_failed/<date>/<session>/` holds no file, nor
    or claimed                   `_failed_reasons/<date>/<session>/` (a reason without its file
                                 is a dismissal still to be recorded), and nothing of it is in
                                 `.processing/<date>/<session>/` or `_completed/` (a retry, a
                                 dismissal or a late write would write to the ledger, and a new
                                 manifest would need it whole)
    its date is over             the date folder is before today (UTC): a session started
                                 again on its date writes on in this ledger, and its next
                                 manifest is written from all of it
    its time has passed          APP_LEDGER_RETENTION_DAYS since its last line (its mtime)

A ledger is looked at again just before it is removed (a line appended meanwhile keeps it).
Only regular files named like a ledger of a valid session name are ever removed, and the date
folder once it is empty. The clock is injected for tests.
"""

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from nfs_watcher_uploader.constants import LEDGER_SUFFIX, LEDGERS_DIR
from nfs_watcher_uploader.items import is_session_name
from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.session import today_utc

logger = logging.getLogger(__name__)

DAY_S = 86_400.0
# (date, session) -> True while its ledger may still be needed (read on the event loop).
BusyFn = Callable[[str, str], bool]


class LedgerRetention:
    def __init__(
        self,
        layout: Layout,
        nfs: Nfs,
        days: float,
        busy: BusyFn,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout, self.nfs, self._busy, self._clock = layout, nfs, busy, clock
        self.keep_s = days * DAY_S
        self.removed = 0

    def __repr__(self) -> str:
        return f"LedgerRetention(keep_days={self.keep_s / DAY_S:g} removed={self.removed})"

    async def sweep(self) -> int:
        """Remove the ledgers no longer needed; returns how many."""
        now = self._clock()
        cutoff, today = now - self.keep_s, today_utc(lambda: now)
        old = await self.nfs.call(
            lambda: self._old_and_idle(cutoff, today), timeout=self.nfs.timeout * 10
        )
        done = [(date, name) for date, name in old if not self._busy(date, name)]
        if not done:
            return 0
        removed = await self.nfs.call(lambda: self._remove(done, cutoff))
        for date, name in removed:
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

    def _ledgers(self) -> list[tuple[str, str, Path]]:
        root = self.layout.processing_root / LEDGERS_DIR
        out: list[tuple[str, str, Path]] = []
        for date_dir in trees.date_dirs(root):
            for entry in trees.listdir(Path(date_dir.path)):
                name = entry.name.removesuffix(LEDGER_SUFFIX)
                if (
                    name != entry.name
                    and is_session_name(name)
                    and entry.is_file(follow_symlinks=False)
                ):
                    out.append((date_dir.name, name, Path(entry.path)))
        return out

    def _old_and_idle(self, cutoff: float, today: str) -> list[tuple[str, str]]:
        """Ledgers of dates before `today`, older than `cutoff`, with nothing of their session
        parked or claimed."""
        out: list[tuple[str, str]] = []
        for date, name, path in self._ledgers():
            if date < today and _older(path, cutoff) and not self._holds_files(date, name):
                out.append((date, name))
        return out

    def _holds_files(self, date: str, name: str) -> bool:
        return any(
            trees.files_below(root / date / name)
            for root in (
                self.layout.parked_root,
                self.layout.reasons_root,
                self.layout.completed_root,
                self.layout.processing_root,
            )
        )

    def _remove(self, ledgers: list[tuple[str, str]], cutoff: float) -> list[tuple[str, str]]:
        removed: list[tuple[str, str]] = []
        for date, name in ledgers:
            path = self.layout.ledger(date, name)
            if not _older(path, cutoff) or self._holds_files(date, name):
                continue  # written to, or something parked, since it was looked at
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append((date, name))
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other ledgers of that day are there
        return removed


def _older(path: Path, cutoff: float) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff
