"""The service's own small state files on NFS: written whole or not at all, read, and set aside
(never over another file) when damaged.

`StateFile` is the one loader of such a file (sessions.json, bandwidth.json): what the share
holds is input like any other, read through `reading` (no link followed, no FIFO waited on, a
size cap, nesting bounded), so anything that is not a file its parser takes, whatever it is,
is set aside as `<name>.damaged-<ns>` and the caller goes on without it. An NFS error, reading
or setting aside, is raised (`StateFileError`) and the caller tries again later: a damaged
file is never overwritten before it is set aside.
"""

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nfs_watcher_uploader.nfs import trees
from nfs_watcher_uploader.nfs.reading import Unusable, check_depth, read_regular, set_aside
from nfs_watcher_uploader.nfs.runner import Nfs

_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# What a parser may raise on bytes it cannot use: a huge number OverflowError (an
# ArithmeticError), a missing field KeyError, and so on. (Deep nesting never reaches it.)
_UNUSABLE = (ValueError, KeyError, TypeError, ArithmeticError, RecursionError)


def write_atomic(
    path: Path, data: bytes, tmp_prefix: str, root: Path | None = None, only_new: bool = False
) -> None:
    """Write `data` to `path` so that a reader sees the old or the new file, never half of one
    (`only_new`: unless a file has that name already). The folders from `root` (by default
    `path`'s own, as configured) down to `path` are entered without following a link
    (`trees.make_folder`: whatever stands in their way is set aside) and the temp file is made
    new, never through a link: nothing planted on the share leads a write out of its tree, and
    the rename replaces only what has the name in that folder."""
    root = path.parent if root is None else root
    folder = trees.make_folder(root, *path.parent.relative_to(root).parts)
    try:
        if only_new and _lexists(path.name, folder):
            return
        tmp = f"{tmp_prefix}{os.getpid()}-{time.monotonic_ns()}"
        try:
            fd = os.open(tmp, _NEW_FLAGS, 0o666, dir_fd=folder)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
        os.fsync(folder)
    finally:
        os.close(folder)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (a write may take only part of it), then fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _lexists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


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
