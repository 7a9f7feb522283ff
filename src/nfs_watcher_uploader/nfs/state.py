"""The service's own small state files on NFS: written whole or not at all, read, and set aside
(never over another file) when damaged."""

import os
import time
from pathlib import Path

from nfs_watcher_uploader.nfs.moves import Moved, move


def write_atomic(path: Path, data: bytes, tmp_prefix: str) -> None:
    """Write `data` to `path` so that a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{tmp_prefix}{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path, label: str) -> Path:
    """Move a file the service cannot use (a damaged state file) out of the way, to
    `<name>.<label>-<ns>` beside it, never over another file; returns where it went."""
    while True:
        aside = path.with_name(f"{path.name}.{label}-{time.time_ns()}")
        if move(path, aside) is not Moved.TAKEN:
            return aside


def read_or_none(path: Path) -> bytes | None:
    """The bytes of a small state file; None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
