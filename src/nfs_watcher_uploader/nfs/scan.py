"""One pass over a session folder: its regular files with their size and mtime, and what else
it holds (excluded files, links and FIFOs, folders too deep or unreadable).

An entry (or a subfolder) NFS refuses to describe (EIO on a damaged file, EACCES, a stale
handle on a folder) is that entry's problem: it is reported as unreadable (which keeps the
session from draining, never from timing out) and the rest of the scan goes on. A session
folder that cannot be read at all is the scan's `problem`."""

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nfs_watcher_uploader.constants import (
    MAX_DEPTH,
)
from nfs_watcher_uploader.nfs.opening import DIR_FLAGS, kind_of

# rel path -> (size, mtime_ns): what the watcher compares between two scans; None stands for
# "present, but its attributes could not be read this time" (a stale handle): the file is
# neither ready nor gone. (Any mtime is a time: one before 1970 is negative.)
Seen = tuple[int, int] | None
ScanMap = dict[str, Seen]
# What an earlier scan found (any mapping of names to what was seen).
Known = Mapping[str, Seen]
UNKNOWN = None


class Wanted(Protocol):
    """Which files a scan takes (filters.FileFilter)."""

    def folder_excluded(self, name: str) -> bool: ...

    def wanted(self, rel: str, name: str) -> bool: ...


@dataclass
class Scan:
    """What one pass over a session folder found."""

    files: ScanMap = field(default_factory=ScanMap)
    # Files the filter excludes (APP_INCLUDE, APP_EXCLUDE, APP_FILE_EXTENSIONS): left in
    # incoming, counted, never claimed.
    excluded: list[str] = field(default_factory=list[str])
    # rel path -> what it is ("a FIFO, not a regular file"...): never ours, never touched.
    ignored: dict[str, str] = field(default_factory=dict[str, str])
    # Folders deeper than MAX_DEPTH: not uploaded, so the session cannot be drained.
    too_deep: list[str] = field(default_factory=list[str])
    # Folders and files this process cannot read (permissions, an NFS error on that entry):
    # rel -> why. They block drained too.
    unreadable: dict[str, str] = field(default_factory=dict[str, str])
    # Regular files with more than one hard link: rel -> the link count (see `claim`).
    linked: dict[str, int] = field(default_factory=dict[str, int])
    # Set when the session folder itself is not a real folder (a symlink, a file).
    problem: str | None = None


def scan_session(
    folder: Path,
    wanted: Wanted,
    known: Known | None = None,
    young_ns: int = 0,
    max_depth: int = MAX_DEPTH,
) -> Scan:
    """Regular files below `folder`, up to `max_depth` levels, keyed by their path relative to
    it ('cam2/rec1.bin'), that `wanted` takes (the others are listed as excluded, without a
    stat). Symbolic links are reported, never followed. A
    name in `known` was taken before, so the filter is not asked again.

    A name in `known` whose mtime is after `young_ns` keeps its known (size, mtime) without a
    stat: it is too young to be claimed now, and a write would only make it younger. (The stat
    is most of a scan's cost: 10,000 files are 10,000 syscalls.)
    """
    scan = Scan()
    try:
        fd = os.open(folder, DIR_FLAGS)
    except FileNotFoundError:
        return scan
    except PermissionError:
        scan.problem = f"{folder} cannot be read by the service (permissions)"
        return scan
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            scan.problem = f"{folder} is not a real folder (a symbolic link or a file)"
        else:
            scan.problem = f"{folder} cannot be read: {exc.strerror or exc}"
        return scan
    try:
        _Walk(scan, wanted, known or {}, young_ns, max_depth).folder(fd, "", 1)
    except OSError as exc:  # the session folder's own listing failed
        scan.problem = f"{folder} cannot be read: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return scan


@dataclass
class _Walk:
    """One scan's walk down a session folder, by descriptor."""

    scan: Scan
    wanted: Wanted
    known: Known
    young_ns: int
    max_depth: int

    def folder(self, fd: int, prefix: str, depth: int, excluded: bool = False) -> None:
        """Scan one folder. Below an excluded folder every file is listed as excluded, unread."""
        with os.scandir(fd) as it:
            entries = list(it)
        known, young_ns, files = self.known, self.young_ns, self.scan.files
        for entry in entries:
            rel = prefix + entry.name
            if not entry.is_dir(follow_symlinks=False):
                # Most of a big folder, every poll: a known file too young to take (`entry`).
                seen = known.get(rel)
                if seen is not None and seen[1] > young_ns and not excluded:
                    files[rel] = seen
                else:
                    self.entry(entry, rel, excluded)
            elif depth >= self.max_depth:
                if not excluded:
                    self.scan.too_deep.append(rel)
            else:
                below = excluded or self.wanted.folder_excluded(entry.name)
                self.subfolder(fd, entry.name, rel, depth, below)

    def subfolder(self, fd: int, name: str, rel: str, depth: int, excluded: bool) -> None:
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            try:
                self.folder(child, rel + "/", depth + 1, excluded)
            finally:
                os.close(child)
        except FileNotFoundError:
            pass
        except OSError as exc:  # one folder we cannot read must not stop the others
            if not excluded:
                self.scan.unreadable[rel] = _why(exc)

    def entry(self, entry: os.DirEntry[str], rel: str, excluded: bool) -> None:
        scan = self.scan
        seen = self.known.get(rel)
        if excluded or (seen is None and not self.wanted.wanted(rel, entry.name)):
            scan.excluded.append(rel)
            return
        if seen is not None and seen[1] > self.young_ns:
            scan.files[rel] = seen
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                scan.files[rel] = UNKNOWN
            else:  # this file's problem (EIO on a damaged file, say), not the scan's
                scan.unreadable[rel] = _why(exc)
            return
        if not stat.S_ISREG(st.st_mode):
            scan.ignored[rel] = f"a {kind_of(st.st_mode)}, not a regular file"
            return
        scan.files[rel] = (st.st_size, st.st_mtime_ns)
        if st.st_nlink > 1:
            scan.linked[rel] = st.st_nlink


def _why(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permissions"
    return exc.strerror or str(exc)
