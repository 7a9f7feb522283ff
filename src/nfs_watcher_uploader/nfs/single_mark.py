"""A single replica's sign of life on its share: `<processing>/single-replica`, touched every
TOUCH_EVERY_S while a process with APP_COORDINATION=none runs, and removed when it stops.

Replicas (APP_COORDINATION=azure) may start while such a process still runs: a rolling update
from `k8s/` to `k8s/replicas/` (maxSurge 1) starts the new pods before the old one stops. Their
leader takes over the tree a single replica left at the processing root (replicas/adoption)
only once the mark is gone or has not changed for STALE_S, as seen on the leader's own
monotonic clock: no clocks of two hosts are compared, and a mark that keeps changing (the
process is alive, perhaps in the middle of an upload) keeps its files its own. A process killed
without its clean stop leaves the mark, which then stops changing.

The mark is read as input: a link, a FIFO or a folder in its place is no mark (nothing is
followed, nothing waits), and touching one is refused with the error it gives.
"""

import errno
import os
import stat
from pathlib import Path

SINGLE_FILE = "single-replica"
# How often a single replica touches its mark.
TOUCH_EVERY_S = 5.0
# How long a mark must look unchanged before replicas take the tree of its process: twelve
# touches missed, and longer than an NFS client's longest attribute cache (acregmax, 60 s by
# default) could hide one change for. Opening the mark to read its attributes revalidates
# them (close-to-open), so a live one is seen changing every few seconds.
STALE_S = 90.0

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
Signature = tuple[int, int, int, int]


def touch(processing: Path) -> None:
    """Create the mark or give it a new mtime. Blocking; raises OSError (ELOOP for a link,
    ENXIO for a FIFO, EISDIR for a folder in its place)."""
    fd = os.open(processing / SINGLE_FILE, os.O_WRONLY | os.O_CREAT | _OPEN, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(processing / SINGLE_FILE))
        os.utime(fd)
    finally:
        os.close(fd)


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
    """What tells one touch of the mark from the next, or None when there is no mark (nothing
    there, or something that is not a regular file). Blocking."""
    path = processing / SINGLE_FILE
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None  # no device or FIFO is ever opened
        fd = os.open(path, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since
            return None
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
