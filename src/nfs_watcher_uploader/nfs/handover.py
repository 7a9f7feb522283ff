"""Handing one owner's files over to another (APP_COORDINATION=azure): every file of a dead
member's tree `<processing>/owners/<dead>/` (or of the trees a single replica left at the
processing root) is renamed into the same place in the adopter's own tree, one by one, never
over a file.

    <date>/<session>/<rel>                 claimed: uploaded by the adopter
    _completed/<date>/<session>/<rel>      committed: checked once more against its blob
    _failed/<date>/<session>/<rel>         parked: its reason file goes first, under the next
    _failed_reasons/<date>/<session>/<rel>   free name of the adopter's parked tree (`rel~2`)
    _outbox/<id>.json, _reports/<id>.json  jobs: a job of the same id is the same job
    _ledgers/...                           stays where it is: read where it lies for manifests

Only the adopter renames into its tree, so two renames never race for one destination (the
rule that makes "never over a file" true across NFS clients, where the check and the rename
are two calls). A place already taken in the adopter's tree (a file of the same name it holds
itself) is left for a later pass, as a file in incoming waits for an earlier one of its name.
A source that a peer or the dead member's late rename took first is simply gone.

Everything is entered by descriptor without following a link, from the processing root down:
anyone who may write the share may have planted a link anywhere in a dead member's tree. Only
regular files below folders whose names are dates and session names are moved; anything else
is left alone and counted (`foreign`). `valid` is asked before each rename: a member that is
no longer valid stops at once (the next adopter finds the rest).
"""

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nfs_watcher_uploader.constants import (
    COMPLETED_DIR,
    DATE_DIR_RE,
    MAX_DEPTH,
    MAX_NAME_VERSIONS,
    OUTBOX_DIR,
    PARKED_DIR,
    PARKED_REASONS_DIR,
    REPORTS_DIR,
)
from nfs_watcher_uploader.errors import NotOurs
from nfs_watcher_uploader.items import WorkItem, is_session_name, printable
from nfs_watcher_uploader.nfs.layout import versioned
from nfs_watcher_uploader.nfs.moves import Moved, exists, move
from nfs_watcher_uploader.nfs.opening import DIR_FLAGS, open_dir, read_regular
from nfs_watcher_uploader.nfs.state import write_atomic

logger = logging.getLogger(__name__)

# A reason file is a few hundred bytes (work/parked writes it); a job a few KiB.
REASON_MAX = 64 * 1024
JOB_SUFFIX = ".json"
_REASON_TMP = ".reason.tmp-"


@dataclass
class Handed:
    """What one pass moved into the adopter's tree, and what it left."""

    claimed: list[WorkItem] = field(default_factory=list[WorkItem])
    # In `_completed/<date>/<session>/<rel>`: `rel` as it is there.
    completed: list[WorkItem] = field(default_factory=list[WorkItem])
    # In `_failed/<date>/<session>/`: `rel` is the name it is parked as now.
    parked: list[WorkItem] = field(default_factory=list[WorkItem])
    jobs: int = 0
    # Work files still in the source: their place in the adopter's tree is taken, or the
    # pass stopped (no longer valid).
    left: int = 0
    # Entries that are not ours to move (links, foreign folder names); never touched.
    foreign: int = 0
    stopped: bool = False

    @property
    def moved(self) -> int:
        return len(self.claimed) + len(self.completed) + len(self.parked) + self.jobs


class _Stop(Exception):
    """No longer valid: stop renaming."""


def hand_over(
    processing_root: Path,
    source: list[str],
    destination: Path,
    valid: Callable[[], bool],
) -> Handed:
    """Move every file of the tree at `processing_root`/`source` (["owners", <dead>], or []
    for the trees a single replica left) into the same place below `destination`. Blocking:
    run it through `Nfs.call`."""
    pass_ = _Pass(processing_root, source, destination, valid)
    try:
        pass_.dated([], pass_.handed.claimed)
        pass_.dated([COMPLETED_DIR], pass_.handed.completed)
        pass_.parked()
        for folder in (OUTBOX_DIR, REPORTS_DIR):
            pass_.jobs(folder)
    except _Stop:
        pass_.handed.stopped = True
    return pass_.handed


def work_left(processing_root: Path, source: list[str]) -> int:
    """How many work files (claimed, committed, parked, jobs) the tree still holds."""
    count = 0
    for sub in ([], [COMPLETED_DIR], [PARKED_DIR]):
        for date in _names(processing_root, [*source, *sub], _is_date):
            for session in _names(processing_root, [*source, *sub, date], is_session_name):
                count += len(_files(processing_root, [*source, *sub, date, session], MAX_DEPTH))
    for folder in (OUTBOX_DIR, REPORTS_DIR):
        count += len(_jobs(processing_root, [*source, folder]))
    return count


def _is_date(name: str) -> bool:
    return DATE_DIR_RE.fullmatch(name) is not None


@dataclass
class _Pass:
    root: Path
    source: list[str]
    destination: Path
    valid: Callable[[], bool]
    handed: Handed = field(default_factory=Handed)

    def _move(self, parts: list[str], dst: Path) -> Moved:
        """Rename the file at root/source/parts to `dst`, entering no link."""
        if not self.valid():
            raise _Stop
        *folders, name = parts
        try:
            fd = open_dir(self.root, [*self.source, *folders])
        except (FileNotFoundError, NotADirectoryError):
            return Moved.GONE
        except NotOurs:
            self.handed.foreign += 1
            return Moved.GONE
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):  # swapped for a link since it was listed
                self.handed.foreign += 1
                return Moved.GONE
            moved = move(name, dst, src_dir_fd=fd)
        except FileNotFoundError:
            return Moved.GONE
        finally:
            os.close(fd)
        if moved is Moved.TAKEN:
            self.handed.left += 1
        return moved

    def dated(self, sub: list[str], into: list[WorkItem]) -> None:
        """`<sub>/<date>/<session>/<rel>` files, to the same place."""
        for date in _names(self.root, [*self.source, *sub], _is_date):
            for session in _names(self.root, [*self.source, *sub, date], is_session_name):
                for rel in _files(self.root, [*self.source, *sub, date, session], MAX_DEPTH):
                    dst = self.destination.joinpath(*sub, date, session, *rel)
                    if self._move([*sub, date, session, *rel], dst) is Moved.DONE:
                        into.append(WorkItem(session, date, "/".join(rel), claimed=True))

    def parked(self) -> None:
        """Parked files, each under the next name free in the destination's parked tree, its
        reason file first (so that the file is never listed without it)."""
        for date in _names(self.root, [*self.source, PARKED_DIR], _is_date):
            sessions = _names(self.root, [*self.source, PARKED_DIR, date], is_session_name)
            for session in sessions:
                for rel in _files(self.root, [*self.source, PARKED_DIR, date, session], MAX_DEPTH):
                    self._park(date, session, rel)
        self._drop_orphan_reasons()

    def _park(self, date: str, session: str, rel: list[str]) -> None:
        reason_parts = [PARKED_REASONS_DIR, date, session, *rel]
        reason = read_regular(self.root, [*self.source, *reason_parts], REASON_MAX)
        parked = self.destination / PARKED_DIR / date / session
        reasons = self.destination / PARKED_REASONS_DIR / date / session
        for version in range(1, MAX_NAME_VERSIONS + 1):
            name = versioned("/".join(rel), version)
            if exists(parked / name) or exists(reasons / name):
                continue
            if reason is not None:
                write_atomic(reasons / name, reason, _REASON_TMP)
            moved = self._move([PARKED_DIR, date, session, *rel], parked / name)
            if moved is not Moved.DONE:
                (reasons / name).unlink(missing_ok=True)
            if moved is Moved.TAKEN:
                self.handed.left -= 1  # taken since it was looked at: try the next name
                continue
            if moved is Moved.DONE:
                _unlink(self.root, [*self.source, *reason_parts])
                self.handed.parked.append(WorkItem(session, date, name, claimed=True))
            return
        self.handed.left += 1

    def _drop_orphan_reasons(self) -> None:
        """A reason whose parked file is gone: the file went back to be uploaded (a park cut
        short) or was removed by hand. Either way the reason stays behind alone: removed."""
        base = [*self.source, PARKED_REASONS_DIR]
        for date in _names(self.root, base, _is_date):
            for session in _names(self.root, [*base, date], is_session_name):
                for rel in _files(self.root, [*base, date, session], MAX_DEPTH):
                    twin = [*self.source, PARKED_DIR, date, session, *rel]
                    if _files_exist(self.root, twin):
                        continue
                    if not self.valid():
                        raise _Stop
                    _unlink(self.root, [*base, date, session, *rel])
                    logger.warning(
                        "Dropped the reason of a parked file that is gone: %s",
                        printable("/".join([date, session, *rel])),
                    )

    def jobs(self, folder: str) -> None:
        """Outbox events and report jobs: the same id is the same job, kept once."""
        for name in _jobs(self.root, [*self.source, folder]):
            moved = self._move([folder, name], self.destination / folder / name)
            if moved is Moved.DONE:
                self.handed.jobs += 1
            elif moved is Moved.TAKEN:  # the adopter has that very job: this copy is a repeat
                self.handed.left -= 1
                _unlink(self.root, [*self.source, folder, name])


def _names(root: Path, parts: list[str], keep: Callable[[str], bool]) -> list[str]:
    """The real folders below root/parts whose names `keep` takes, in name order."""
    try:
        fd = open_dir(root, parts)
    except (FileNotFoundError, NotADirectoryError, NotOurs):
        return []
    try:
        with os.scandir(fd) as it:
            found = [e.name for e in it if e.is_dir(follow_symlinks=False) and keep(e.name)]
    finally:
        os.close(fd)
    return sorted(found)


def _files(root: Path, parts: list[str], depth: int) -> list[list[str]]:
    """The regular files below root/parts, as path segments, entering no link."""
    try:
        fd = open_dir(root, parts)
    except (FileNotFoundError, NotADirectoryError, NotOurs):
        return []
    try:
        return _walk(fd, [], depth)
    finally:
        os.close(fd)


def _walk(fd: int, prefix: list[str], depth: int) -> list[list[str]]:
    out: list[list[str]] = []
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if depth <= 1:
                continue
            try:
                child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES):
                    continue
                raise
            try:
                out += _walk(child, [*prefix, entry.name], depth - 1)
            finally:
                os.close(child)
        elif entry.is_file(follow_symlinks=False):
            out.append([*prefix, entry.name])
    return out


def _jobs(root: Path, parts: list[str]) -> list[str]:
    return [
        rel[0]
        for rel in _files(root, parts, 1)
        if rel[0].endswith(JOB_SUFFIX) and not rel[0].startswith(".")
    ]


def _files_exist(root: Path, parts: list[str]) -> bool:
    *folders, name = parts
    try:
        fd = open_dir(root, folders)
    except (FileNotFoundError, NotADirectoryError, NotOurs):
        return False
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _unlink(root: Path, parts: list[str]) -> None:
    """Remove a regular file (never a folder, never through a link)."""
    *folders, name = parts
    try:
        fd = open_dir(root, folders)
    except (FileNotFoundError, NotADirectoryError, NotOurs):
        return
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
