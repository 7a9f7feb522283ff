"""A single replica's sign of life on its share: `<processing>/single-replica`, touched every
TOUCH_EVERY_S while a process with APP_COORDINATION=none runs, and removed when it stops.

Replicas (APP_COORDINATION=azure) may start while such a process still runs: a rolling update
from `k8s/` to `k8s/replicas/` (maxSurge 1) starts the new pods before the old one stops. Their
leader takes over the tree a single replica left at the processing root (replicas/adoption)
only once the mark is gone or has not changed for STALE_S, as seen on the leader's own
monotonic clock: no clocks of two hosts are compared, and a mark that keeps changing (the
process is alive, perhaps in the middle of an upload) keeps its files its own. A process killed
without its clean stop leaves the mark, which then stops changing.

The mark is read as input: a link, a FIFO or a folder in its place is never followed, opened
or waited on. It is no sign that no single replica runs (anyone who may write the share may
swap a live mark for one, and a live process's files must not be handed over for that): it
counts as a mark that does not change, and a single replica's next touch sets it aside
(`_set_aside/`) and puts its mark back, as it does with a file it may not write (another
user's, mode 0444): a mark it cannot touch would stop changing while it runs.
"""

import errno
import logging
import os
import stat
from pathlib import Path

from nfs_watcher_uploader.nfs.reading import set_aside

logger = logging.getLogger(__name__)

SINGLE_FILE = "single-replica"
# How often a single replica touches its mark.
TOUCH_EVERY_S = 5.0
# How long a mark must look unchanged before replicas take the tree of its process: twelve
# touches missed, and longer than an NFS client's longest attribute cache (acregmax, 60 s by
# default) could hide one change for. Opening the mark to read its attributes revalidates
# them (close-to-open), so a live one is seen changing every few seconds.
STALE_S = 90.0

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What opening the mark gives when something else was swapped in since it was looked at.
_SWAPPED = (errno.ELOOP, errno.ENXIO, errno.EISDIR)
# What opening a regular file in the mark's place gives when this process may not write it.
_NOT_OURS = (errno.EACCES, errno.EPERM)
# Times something in the way of the mark is set aside before a touch gives up.
_ATTEMPTS = 5
Signature = tuple[int, int, int, int]


def touch(processing: Path) -> None:
    """Create the mark or give it a new mtime; whatever else stands in its place (a link, a
    FIFO, a folder, a file this process may not write: another user's) is set aside first,
    never followed or opened. Blocking; raises OSError."""
    path = processing / SINGLE_FILE
    for _ in range(_ATTEMPTS):
        try:
            in_place = os.lstat(path)
        except FileNotFoundError:
            in_place = None
        if in_place is None or stat.S_ISREG(in_place.st_mode):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | _OPEN, 0o644)
            except OSError as exc:
                if exc.errno in _SWAPPED:
                    continue  # swapped since the look: look again
                if exc.errno not in _NOT_OURS or in_place is None:
                    raise
                fd = None  # a file not ours to write: set aside below
            if fd is not None:
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        os.utime(fd)
                        return
                finally:
                    os.close(fd)
                continue
        aside = set_aside(path, "unusable", root=processing)
        logger.error("%s is not a file of ours to touch; set aside as %s", path, aside)
    raise OSError(errno.EAGAIN, f"{path} keeps being replaced")


def remove(processing: Path) -> None:
    """Remove the mark at a clean stop (a regular file only). Blocking; a mark that cannot be
    removed stops changing, and replicas take over STALE_S later."""
    path = processing / SINGLE_FILE
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def signature(processing: Path) -> Signature | None:
    """What tells one touch of the mark from the next, or None when there is no mark. Anything
    else in its place counts as a mark that does not change while it stays (its size as -1):
    never opened, followed or waited on. Blocking."""
    path = processing / SINGLE_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    planted = (st.st_ino, -1, st.st_mtime_ns, st.st_ctime_ns)
    if not stat.S_ISREG(st.st_mode):
        return planted  # no device or FIFO is ever opened
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _SWAPPED:  # replaced by a link (or so) since
            return planted
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return planted
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
