"""Block ids: what lets an upload recognise the blocks it staged before (resume, early blocks)
and nothing else's. An id is a block's index and an HMAC of its MD5, keyed with a secret of
this deployment kept on NFS next to the state file."""

import hashlib
import hmac
import logging
import os
import stat
import time
from pathlib import Path

from nfs_watcher_uploader.constants import BLOCK_KEY_BYTES, NOBODY_UID
from nfs_watcher_uploader.nfs.moves import Moved, move
from nfs_watcher_uploader.nfs.reading import set_aside

logger = logging.getLogger(__name__)


def block_id(key: bytes, index: int, md5: bytes) -> str:
    """The id of block `index` with MD5 `md5`: one length for every block of a blob (Azure
    requires it), at most 64 bytes.

    Keyed with `key`, a secret of this deployment: an uncommitted block is taken as already
    sent only when its id matches, and only this service can make that id. An id of index and
    MD5 alone could be staged first, with other bytes, by anyone who may write the container."""
    mac = hmac.new(key, index.to_bytes(8) + md5, hashlib.sha256).hexdigest()[:32]
    return f"{index:08d}-{mac}"


def load_block_key(path: Path) -> bytes:
    """The key of block ids kept at `path`, made on first use. Only a regular file that no one
    else may read is taken: a key others know (a symbolic link to a shared file, a copy left
    readable) would let them plant blocks we take for ours. Anything else there (or a key of
    the wrong length) is set aside and replaced: blocks staged under the old key are then sent
    again, nothing worse. Blocking: run it through Nfs.call."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _new_block_key(path)
    except OSError as exc:  # a symbolic link (ELOOP), a folder we may not open, ...
        return _replace(path, exc.strerror or str(exc))
    try:
        st = os.fstat(fd)
        why = _unfit_key(st)
        key = b"" if why else os.read(fd, BLOCK_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if not why and len(key) != BLOCK_KEY_BYTES:
        why = f"{len(key)} bytes"
    return _replace(path, why) if why else key


def _unfit_key(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & 0o077:
        return f"readable or writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    # Ours, or (root on an export that squashes root) nobody's.
    if st.st_uid not in (os.geteuid(), *((NOBODY_UID,) if os.geteuid() == 0 else ())):
        return f"owned by uid {st.st_uid}"
    return None


def _replace(path: Path, why: str) -> bytes:
    aside = set_aside(path, "unfit")  # a link or a folder itself, never what it points to
    logger.error("Block id key %s not used (%s); kept as %s, a new one made", path, why, aside)
    return _new_block_key(path)


def _new_block_key(path: Path) -> bytes:
    key = os.urandom(BLOCK_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    if move(tmp, path) is not Moved.DONE:  # never over a key that came meanwhile: use that one
        tmp.unlink(missing_ok=True)
        return load_block_key(path)
    return key
