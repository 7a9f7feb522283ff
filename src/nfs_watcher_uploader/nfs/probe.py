"""The start-up probe of the share: before the service says it is ready, show that what every
claim needs works.

    1. APP_NFS_INCOMING_DIR exists and is a folder. It is never created here: a missing one is
       a typo or a share that is not mounted, and recordings written into a folder we made
       would sit on the local disk, unnoticed.
    2. Probe files that a run which died mid-probe left (older than PROBE_STALE_S) are removed
       from both roots; younger ones may be another process's and are left alone.
    3. A probe file is created at the incoming root, renamed into APP_NFS_PROCESSING_ROOT and
       back (a claim is such a rename, a file put back the other way), then removed; a
       processing root the probe had to create is removed again, so that a start-up that
       stops later has left the share as it found it.

What no waiting can change stops start-up (CannotStart) with a line that names the cause and
the fix: EXDEV (two mounts, even of one disk: Linux renames within one mount only), EACCES or
EPERM (the service's user may not write there), EROFS (a read-only mount), a missing incoming
folder. Anything else (ESTALE, EIO, a timeout) is raised as the OSError it is: start-up tries
again, as for any NFS outage.

Then one mode per share (`claim_mode`): replicas coordinated through storage
(APP_COORDINATION=azure) mark the share with `<processing>/coordination` (create-only), and a
single replica (APP_COORDINATION=none) refuses to start on a share so marked: it would claim,
drain and clean up as if alone, beside replicas that share the files by rendezvous and drain
them over every member. README "Running N replicas" says how to go back.

The probe file is `.nfs-watcher-uploader-probe-<host>-<pid>-<random>`: unique to this process,
and a dot name at the incoming root, where the watcher never looks (it scans session folders
only), so it can never be taken for a recording.
"""

import errno
import logging
import os
import socket
import stat
import time
import uuid
from pathlib import Path

from nfs_watcher_uploader.constants import COORDINATION_FILE, PROBE_PREFIX, PROBE_STALE_S
from nfs_watcher_uploader.errors import CannotStart
from nfs_watcher_uploader.items import printable
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs

logger = logging.getLogger(__name__)

_INCOMING = "APP_NFS_INCOMING_DIR"
_PROCESSING = "APP_NFS_PROCESSING_ROOT"
# Errors that say the same thing at every attempt.
_DENIED = (errno.EACCES, errno.EPERM)


async def probe_share(layout: Layout, nfs: Nfs) -> None:
    """Run the probe off the event loop, with the NFS deadline. Raises CannotStart for what
    cannot heal, OSError for what may."""
    await nfs.call(lambda: run_probe(layout.incoming_root, layout.processing_root))


def run_probe(incoming: Path, processing: Path, now: float | None = None) -> None:
    """The probe itself (blocking). `now` is the clock stale probe files are judged by."""
    _check_incoming(incoming)
    remove_stale_probes((incoming, processing), time.time() if now is None else now)
    made = [p for p in (processing, *processing.parents) if not p.exists()]
    try:
        processing.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _stop_if_forever(exc, "create", _PROCESSING, processing)
        raise
    name = probe_name()
    there, here = processing / name, incoming / name
    try:
        try:
            os.close(os.open(here, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            _stop_if_forever(exc, "create a file in", _INCOMING, incoming)
            raise
        _rename(here, there, incoming, processing)
        _rename(there, here, incoming, processing)
    finally:
        for path in (here, there):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # removed by a later start, once stale
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


def claim_mode(processing: Path, shared: bool) -> None:
    """Mark the share for coordinated replicas (`shared`), or refuse to start a single replica
    on a share so marked (CannotStart). Blocking."""
    mark = processing / COORDINATION_FILE
    if not shared:
        try:
            os.lstat(mark)
        except FileNotFoundError:
            return
        raise CannotStart(
            f"the share is used by replicas with APP_COORDINATION=azure ({mark} exists): "
            "run this one with APP_COORDINATION=azure too, or switch the share back as README "
            '"Running N replicas" says (stop every replica, then remove that file)'
        )
    processing.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return
    try:
        os.write(fd, b"azure\n")
    finally:
        os.close(fd)


def probe_name() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return f"{PROBE_PREFIX}{host[:64]}-{os.getpid()}-{uuid.uuid4().hex}"


def remove_stale_probes(folders: tuple[Path, ...], now: float) -> int:
    """Remove probe files older than PROBE_STALE_S (regular files of that name only) from
    `folders`; returns how many. Tidying only: one that cannot be removed (a read-only mount,
    another user's file) is left for a later start, and the probe itself says what is wrong."""
    removed = 0
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if e.name.startswith(PROBE_PREFIX)]
        except OSError:
            continue  # missing, or not ours to list: the probe's own steps tell
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > PROBE_STALE_S:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning(
                    "Cannot remove %s, a probe file a stopped run left (%s); left for a later "
                    "start",
                    printable(entry.path),
                    exc.strerror or exc,
                )
    return removed


def _check_incoming(incoming: Path) -> None:
    try:
        st = os.stat(incoming)
    except (FileNotFoundError, NotADirectoryError):
        raise CannotStart(
            f"{_INCOMING} ({incoming}) does not exist. The service never creates it: check the "
            "path for a typo, and that the NFS share is mounted (create the folder on the "
            "share if it is new)"
        ) from None
    except OSError as exc:
        _stop_if_forever(exc, "look into", _INCOMING, incoming)
        raise
    if not stat.S_ISDIR(st.st_mode):
        raise CannotStart(f"{_INCOMING} ({incoming}) is not a folder: point it at the folder")


def _rename(src: Path, dst: Path, incoming: Path, processing: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise CannotStart(
                f"{_INCOMING} ({incoming}) and {_PROCESSING} ({processing}) are two mounts "
                "(rename: Invalid cross-device link), even if of one disk: a file is claimed by "
                "renaming it, which Linux does only within one mount. Mount the share once and "
                "set both folders below that mount (for example /mnt/nfs/incoming and "
                "/mnt/nfs/.processing, as k8s/ and docker-compose.yaml do)"
            ) from exc
        into = (_PROCESSING, processing) if dst.parent == processing else (_INCOMING, incoming)
        _stop_if_forever(exc, "rename files into", *into)
        raise


def _stop_if_forever(exc: OSError, what: str, variable: str, folder: Path) -> None:
    """Raise CannotStart naming the cause and the fix when `exc` stays whatever we wait;
    return when it may heal (the caller raises it as it is)."""
    if exc.errno in _DENIED:
        who = f"uid {os.geteuid()}, gid {os.getegid()}"
        raise CannotStart(
            f"the service's user ({who}) may not {what} {variable} ({folder}): "
            f"{exc.strerror}. Let it create, rename and delete files there (chown the folders "
            "to it, or an export with all_squash,anonuid=...), or run it as their owner "
            "(compose: APP_UID/APP_GID; Kubernetes: runAsUser/fsGroup)"
        ) from exc
    if exc.errno == errno.EROFS:
        raise CannotStart(
            f"{variable} ({folder}) is on a read-only mount: the service renames recordings "
            "out of incoming and keeps its state beside them. Mount the share read-write"
        ) from exc
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        raise CannotStart(
            f"cannot {what} {variable} ({folder}): a file stands where a folder of that path "
            "should be. Check the path"
        ) from exc
