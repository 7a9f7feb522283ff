"""Dismissing a parked file: an operator took it out (copied it elsewhere, say) and says so, or
removed it by hand. Either way it leaves the parked tree with its reason, is recorded in the
session's ledger (every later manifest lists it under `dismissed`, and the session is never
`complete` again: the file is not in storage), counted (`dismissed`) and logged, and its session
may drain (one that had ended drains again, and its manifest is written anew).

    dismiss(session, parked_as)   DELETE /v1/files/failed/{session}/{parked_as}: the file's name
                                  below `_failed/<date>/<session>/` (`name~2` for a second park
                                  of a name), subfolders and all
    notice_removed()              on GC's beat: a file a session had parked that is no longer in
                                  `_failed/` was removed by hand, and is dismissed the same way
    settle_orphans()              at start-up, before anything is queued: a reason whose file is
                                  gone (removed while the service was down, or a dismissal cut
                                  short) is a dismissal; one whose file is back in `.processing`
                                  (a park cut short by a crash) is only removed

Steps, in an order that survives a crash anywhere: remove the file, append the ledger line,
remove the reason (a reason left without its file is settled by the next start; a line
recorded twice is read once). Every step walks the parked trees by descriptor without following
a link, and only a regular file is ever removed, so a link or folder planted there leads
nowhere. All of it runs under `ParkedFiles.changing`, so a requeue never races it.
"""

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.blob.blobinfo import iso_utc
from nfs_watcher_uploader.cloud.ledger import Ledger
from nfs_watcher_uploader.cloud.manifest import Dismissed
from nfs_watcher_uploader.constants import (
    MAX_BLOB_NAME,
    MAX_DEPTH,
    NAME_MAX,
    PARKED_DIR,
    PARKED_REASONS_DIR,
)
from nfs_watcher_uploader.errors import SessionConflict
from nfs_watcher_uploader.items import (
    ParkedFile,
    Stats,
    WorkItem,
    check_session_name,
    is_session_name,
    printable,
)
from nfs_watcher_uploader.nfs.moves import is_regular
from nfs_watcher_uploader.nfs.reading import set_aside_or_leave
from nfs_watcher_uploader.nfs.runner import Nfs, until_spent
from nfs_watcher_uploader.nfs.trees import date_dirs, iter_tree_files, open_folder
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.work.parked import (
    ParkedFiles,
    log_unusable,
    named_as_listed,
    read_reason,
    remove_reason,
)

logger = logging.getLogger(__name__)


def check_parked_as(path: str) -> list[str]:
    """The segments of a parked file's name below its session folder, or ValueError naming
    the rule it breaks (it comes from a URL: `..`, empty segments and NUL are refused)."""
    if not path or len(path) > MAX_BLOB_NAME:
        raise ValueError(f"the parked file's name must be 1 to {MAX_BLOB_NAME} characters")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH + 1:
        raise ValueError(f"the parked file's name has more than {MAX_DEPTH} folders")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError("the parked file's name must not hold '', '.' or '..' segments")
        if "\0" in part or len(os.fsencode(part)) > NAME_MAX:
            raise ValueError(f"{printable(part)!r} cannot be a file name")
    return parts


@dataclass(frozen=True, slots=True)
class _Found:
    """A parked file being dismissed, with what its reason file said."""

    date_prefix: str
    session_name: str
    parked_as: str
    rel: str
    reason: str
    parked_at: str | None

    def as_parked(self) -> ParkedFile:
        return ParkedFile(
            self.date_prefix, self.session_name, self.rel, self.parked_as, self.reason
        )


class Dismissals:
    def __init__(
        self,
        parked: ParkedFiles,
        ledger: Ledger | None,
        sessions: Sessions,
        nfs: Nfs,
        stats: Stats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._parked, self.ledger, self.sessions = parked, ledger, sessions
        self.nfs, self.stats, self._clock = nfs, stats, clock
        self._root = parked.layout.processing_root

    def __repr__(self) -> str:
        return f"Dismissals(dismissed={self.stats.dismissed})"

    async def dismiss(
        self, session_name: str, parked_as: str, date_prefix: str | None = None
    ) -> ParkedFile:
        """Remove the parked file and its reason, and record it. Raises ValueError for a bad
        name, LookupError when no such parked file is there, SessionConflict when it is parked
        under several dates and `date_prefix` does not say which, OSError when NFS failed."""
        check_session_name(session_name)
        check_parked_as(parked_as)
        async with self._parked.changing:
            parked_as = self._named(session_name, parked_as)
            parts = check_parked_as(parked_as)
            dates = await self.nfs.call(lambda: self._dates_holding(session_name, parts))
            if date_prefix is not None:
                dates = [d for d in dates if d == date_prefix]
            what = f"{printable(parked_as)!r} of session {session_name!r}"
            if not dates:
                raise LookupError(
                    f"no parked file {what} (GET /v1/files/failed lists them: `parked_as`)"
                )
            if len(dates) > 1:
                raise SessionConflict(
                    f"{what} is parked under {', '.join(dates)}: add ?date_prefix=YYYYMMDD"
                )
            date = dates[0]
            found = await self.nfs.call(lambda: self._take(date, session_name, parked_as))
            if found is None:
                raise LookupError(f"no parked file {what}")
            await self._settle(found, "through the API")
        return found.as_parked()

    def _named(self, session_name: str, parked_as: str) -> str:
        """The name NFS holds for `parked_as`, which may be given as listings show it
        (`named_as_listed`)."""
        session = self.sessions.by_name.get(session_name)
        if session is None:
            return parked_as
        return named_as_listed(session_name, parked_as, session.parked) or parked_as

    async def notice_removed(self) -> int:
        """Dismiss what sessions had parked and `_failed/` no longer holds. Returns how many."""
        async with self._parked.changing:
            # Taken before the listing: a park that ends meanwhile is not in it, and not here.
            had = {(s.name, name) for s in self.sessions.by_name.values() for name in s.parked}
            if not had:
                return 0
            present, reasons = await self.nfs.call(self._trees)
            count = 0
            for session_name, parked_as in sorted(had - present):
                session = self.sessions.by_name.get(session_name)
                if session is None or parked_as not in session.parked:
                    continue
                dates = reasons.get((session_name, parked_as)) or [session.date_prefix]
                read = functools.partial(self._read_reason, dates[0], session_name, parked_as)
                found = await self.nfs.call(read)
                await self._settle(found, "removed from _failed/ by hand")
                count += 1
            return count

    async def settle_orphans(self) -> int:
        """At start-up, before anything is queued: settle reasons left without their file. Only
        a session that may hold parked files (known, and not drained: a drained session had
        none at its end) can have had one; a reason of any other session is not one the
        service wrote (planted on the share): it is set aside, and nothing is dismissed."""
        async with self._parked.changing:
            keys = await self.nfs.call(self._orphan_keys)
            orphans = await self.nfs.in_batches(keys, self._judge_batch)
            settled = 0
            for found, stale in orphans:
                if stale:  # a park a crash cut short: the file is claimed again, and goes up
                    await self.nfs.call(functools.partial(self._remove_reason, found))
                    continue
                session = self.sessions.by_name.get(found.session_name)
                if session is None or session.state == "drained":
                    await self.nfs.call(functools.partial(self._set_aside_reason, found))
                    continue
                await self._settle(found, "gone from _failed/ while the service was down")
                settled += 1
            return settled

    async def _settle(self, found: _Found, how: str) -> None:
        """Record the dismissal, remove the reason, count and log it, let the session drain."""
        if self.ledger is not None:
            entry = Dismissed(
                path=printable(found.rel),
                parked_as=printable(found.parked_as),
                reason=printable(found.reason),
                parked_at=found.parked_at,
                dismissed_at=iso_utc(self._clock()),
            )
            await self.ledger.record_dismissed(found.date_prefix, found.session_name, entry)
        await self.nfs.call(lambda: self._remove_reason(found))
        self._parked.forget((found.date_prefix, found.session_name, found.parked_as))
        item = WorkItem(found.session_name, found.date_prefix, found.rel, claimed=True)
        session = self.sessions.for_item(item)
        text = (
            f"{found.rel}: parked as {found.parked_as} ({found.reason}), dismissed {how}; "
            "it is not in storage"
        )
        session.dismiss(found.parked_as, text)
        self.stats.dismissed += 1
        logger.warning(
            "Parked file dismissed: %s",
            printable(text),
            extra={"file_name": printable(found.rel), "session_name": found.session_name},
        )
        await self.sessions.reopen(session, "a parked file of it was dismissed")

    # --- on NFS, in a thread ------------------------------------------------------------------

    def _dates_holding(self, session_name: str, parts: list[str]) -> list[str]:
        """The date folders whose `<session>/<parts>` is a regular file in the parked tree."""
        return [
            date
            for date in date_dirs(self._root, PARKED_DIR)
            if _holds(self._root, [PARKED_DIR, date, session_name], parts)
        ]

    def _take(self, date: str, session_name: str, parked_as: str) -> _Found | None:
        """Read the reason, then remove the parked file (a regular file only)."""
        found = self._read_reason(date, session_name, parked_as)
        parts = parked_as.split("/")
        held = _regular(self._root, [PARKED_DIR, date, session_name], parts)
        if held is None:
            return None
        fd, name = held
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)
        return found

    def _read_reason(self, date: str, session_name: str, parked_as: str) -> _Found:
        """What the reason file of a parked file says (defaults where it says nothing usable:
        an unusable one is set aside, with an error line)."""
        found = read_reason(self._root, (date, session_name, parked_as))
        if found.problem is not None:
            log_unusable((date, session_name, parked_as), found.problem)
        record = found.reason
        at = None if record.at is None else iso_utc(record.at)
        return _Found(date, session_name, parked_as, record.rel or parked_as, record.reason, at)

    def _remove_reason(self, found: _Found) -> None:
        remove_reason(self._root, (found.date_prefix, found.session_name, found.parked_as))

    def _set_aside_reason(self, found: _Found) -> None:
        """A reason without its file that no session of ours can have written: kept aside."""
        key = (found.date_prefix, found.session_name, found.parked_as)
        *parts, name = found.parked_as.split("/")
        fd = open_folder(self._root, PARKED_REASONS_DIR, *key[:2], *parts)
        if fd is None:
            return
        try:
            path = self._root.joinpath(PARKED_REASONS_DIR, *key)
            done = set_aside_or_leave(path, self._root, fd)
        finally:
            os.close(fd)
        logger.error(
            "Reason file %s names no parked file of a session that may have one (session %s "
            "is %s): nothing is dismissed; %s",
            printable(str(path)),
            found.session_name,
            "unknown" if found.session_name not in self.sessions.by_name else "drained",
            printable(done),
            extra={"session_name": found.session_name, "file_name": printable(name)},
        )

    def _trees(self) -> tuple[set[tuple[str, str]], dict[tuple[str, str], list[str]]]:
        """(session, parked_as) of every parked file; the dates of every reason file."""
        present = {(name, rel) for _, name, rel, _ in iter_tree_files(self._root, PARKED_DIR)}
        reasons: dict[tuple[str, str], list[str]] = {}
        for date, name, rel, _ in iter_tree_files(self._root, PARKED_REASONS_DIR):
            reasons.setdefault((name, rel), []).append(date)
        return present, reasons

    def _orphan_keys(self) -> list[tuple[str, str, str]]:
        """(date, session, parked_as) of the reasons without their parked file."""
        parked = {
            (date, name, rel) for date, name, rel, _ in iter_tree_files(self._root, PARKED_DIR)
        }
        return [
            (date, name, rel)
            for date, name, rel, _ in iter_tree_files(self._root, PARKED_REASONS_DIR)
            if (date, name, rel) not in parked and is_session_name(name)
        ]

    def _judge_batch(
        self, keys: Sequence[tuple[str, str, str]], budget: float
    ) -> list[tuple[_Found, bool]]:
        return until_spent(keys, budget, lambda key: self._judge(*key))

    def _judge(self, date: str, name: str, rel: str) -> tuple[_Found, bool]:
        """What an orphan reason says, and whether its file is claimed again."""
        found = self._read_reason(date, name, rel)
        try:
            claimed = _regular(self._root, [date, name], check_parked_as(found.rel))
        except ValueError:
            claimed = None
        if claimed is not None:
            os.close(claimed[0])
        return found, claimed is not None


def _holds(root: Path, folders: list[str], parts: list[str]) -> bool:
    held = _regular(root, folders, parts)
    if held is not None:
        os.close(held[0])
    return held is not None


def _regular(root: Path, folders: list[str], parts: list[str]) -> tuple[int, str] | None:
    """(a descriptor on the folder, the name) when `root/folders/parts` is a regular file,
    reached without following any link below `root`; None otherwise. The caller closes it."""
    fd = open_folder(root, *folders, *parts[:-1])
    if fd is None:
        return None
    try:
        regular = is_regular(parts[-1], fd)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return fd, parts[-1]
