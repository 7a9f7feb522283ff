"""The service's own small state files on NFS: written whole or not at all, read, and set aside
(never over another file) when damaged.

`StateFile` is the one loader of such a file (sessions.json, bandwidth.json): what the share
holds is input like any other, read through `reading` (no link followed, no FIFO waited on, a
size cap, nesting bounded), so anything that is not a file its parser takes, whatever it is,
is set aside as `<name>.damaged-<ns>` and the caller goes on without it. An NFS error, reading
or setting aside, is raised (`StateFileError`) and the caller tries again later: a damaged
file is never overwritten before it is set aside.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.nfs.reading import Unusable, check_depth, read_regular, set_aside
from nfs_watcher_uploader.nfs.runner import Nfs

# What a parser may raise on bytes it cannot use: a huge number OverflowError (an
# ArithmeticError), a missing field KeyError, and so on. (Deep nesting never reaches it.)
_UNUSABLE = (ValueError, KeyError, TypeError, ArithmeticError, RecursionError)


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


class StateFileError(OSError):
    """NFS failed reading a state file, or setting a damaged one aside: try again later."""


@dataclass(frozen=True, slots=True)
class Loaded[T]:
    """What `StateFile.load` found: the parsed value, or None (no file, or a damaged one)."""

    value: T | None
    # Why the file could not be used, and where it was set aside.
    damaged: str | None = None
    aside: Path | None = None


class StateFile:
    """One small JSON state file of the service, next to `sessions.json`."""

    def __init__(self, path: Path, nfs: Nfs, tmp_prefix: str, limit: int) -> None:
        self.path, self._nfs, self._tmp_prefix = path, nfs, tmp_prefix
        self._limit = limit

    def __repr__(self) -> str:
        return f"StateFile({self.path})"

    async def load[T](self, parse: Callable[[bytes], T]) -> Loaded[T]:
        """The file parsed by `parse`; set aside when it is not a regular file of at most the
        size cap, nests too deep, or `parse` refuses it. Raises StateFileError when NFS
        fails."""
        try:
            raw = await self._nfs.call(lambda: read_regular(self.path, self._limit))
        except Unusable as exc:
            raw, why = None, str(exc)
        except OSError as exc:
            raise StateFileError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        else:
            if raw is None:
                return Loaded(None)
            try:
                check_depth(raw)
                return Loaded(parse(raw))
            except _UNUSABLE as exc:
                why = str(exc)
        try:
            aside = await self._nfs.call(lambda: set_aside(self.path, "damaged"))
        except OSError as exc:
            raise StateFileError(
                f"{self.path} is damaged and cannot be set aside ({exc.strerror or exc}); "
                "it is left as it is and loaded again later"
            ) from exc
        return Loaded(None, why, aside)

    async def save(self, data: bytes) -> None:
        """Replace the file with `data`, atomically. Raises OSError."""
        await self._nfs.call(lambda: write_atomic(self.path, data, self._tmp_prefix))

    async def remove(self) -> None:
        """Raises OSError; a file already gone is fine."""
        await self._nfs.call(lambda: self.path.unlink(missing_ok=True))
