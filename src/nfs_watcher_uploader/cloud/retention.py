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

from nfs_watcher_uploader.constants import (
    COMPLETED_DIR,
    LEDGER_SUFFIX,
    LEDGERS_DIR,
    PARKED_DIR,
    PARKED_REASONS_DIR,
)
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

    def _ledgers(self) -> list[tuple[str, str]]:
        root = self.layout.processing_root
        out: list[tuple[str, str]] = []
        for date in trees.date_dirs(root, LEDGERS_DIR):
            for entry, _, is_file in trees.listdir(root, LEDGERS_DIR, date):
                name = entry.removesuffix(LEDGER_SUFFIX)
                if name != entry and is_session_name(name) and is_file:
                    out.append((date, name))
        return out

    def _old_and_idle(self, cutoff: float, today: str) -> list[tuple[str, str]]:
        """Ledgers of dates before `today`, older than `cutoff`, with nothing of their session
        parked or claimed."""
        return [
            (date, name)
            for date, name in self._ledgers()
            if date < today
            and self._older(date, name, cutoff)
            and not self._holds_files(date, name)
        ]

    def _holds_files(self, date: str, name: str) -> bool:
        root = self.layout.processing_root
        return any(
            trees.files_below(root, *folder, date, name)
            for folder in ((PARKED_DIR,), (PARKED_REASONS_DIR,), (COMPLETED_DIR,), ())
        )

    def _older(self, date: str, name: str, cutoff: float) -> bool:
        """The ledger is a regular file last written before `cutoff` (never followed)."""
        fd = trees.open_folder(self.layout.processing_root, LEDGERS_DIR, date)
        if fd is None:
            return False
        try:
            st = os.stat(f"{name}{LEDGER_SUFFIX}", dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff

    def _remove(self, ledgers: list[tuple[str, str]], cutoff: float) -> list[tuple[str, str]]:
        removed: list[tuple[str, str]] = []
        root = self.layout.processing_root
        for date, name in ledgers:
            if not self._older(date, name, cutoff) or self._holds_files(date, name):
                continue  # written to, or something parked, since it was looked at
            fd = trees.open_folder(root, LEDGERS_DIR, date)
            if fd is None:
                continue
            try:
                os.unlink(f"{name}{LEDGER_SUFFIX}", dir_fd=fd)
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            removed.append((date, name))
            trees.prune_empty_dirs(root, lambda d, s: True, LEDGERS_DIR)  # the day's folder
        return removed
