"""Walking and pruning `<root>/<date>/<session>/` trees (processing, parked, reasons, completed,
staging), in name order, entering every folder below `root` by descriptor without following a
link: a link planted anywhere in a tree (its top folder included, `_failed` say) leads nowhere.

`root` is a configured folder (the processing root, the staging folder), taken as it is;
`parts` are the folders below it that lead to the tree (`PARKED_DIR`), entered like the rest.
Below a session folder, no folder deeper than a file of ours can be (MAX_DEPTH levels, as the
scan takes them from incoming) is entered: anyone can nest folders on the share without end.
"""

import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from nfs_watcher_uploader.constants import DATE_DIR_RE, MAX_DEPTH
from nfs_watcher_uploader.nfs.opening import DIR_FLAGS
from nfs_watcher_uploader.nfs.reading import set_aside

logger = logging.getLogger(__name__)

# Times something in the way of a folder is set aside before making it gives up.
_ATTEMPTS = 5
# (name, is a real folder, is a regular file) of one entry, from the folder's listing alone.
Entry = tuple[str, bool, bool]


def iter_tree_files(root: Path, *parts: str) -> Iterator[tuple[str, str, str, Path]]:
    """Yield (date_prefix, session_name, rel, path) for regular files anywhere below
    `root/parts/<YYYYMMDD>/<session>/`, in name order."""
    top = root.joinpath(*parts)
    for date in date_dirs(root, *parts):
        for session, is_dir, _ in listdir(root, *parts, date):
            if is_dir:
                for rel in files_below(root, *parts, date, session):
                    yield date, session, rel, top / date / session / rel


def date_dirs(root: Path, *parts: str) -> list[str]:
    """The `<YYYYMMDD>` folders of `root/parts` (real folders, not links to one), in name
    order."""
    return [
        name for name, is_dir, _ in listdir(root, *parts) if is_dir and DATE_DIR_RE.fullmatch(name)
    ]


def listdir(root: Path, *parts: str) -> list[Entry]:
    """The entries of `root/parts` in name order; none if it is missing or not a real folder."""
    fd = open_folder(root, *parts)
    if fd is None:
        return []
    try:
        return _entries(fd)
    finally:
        os.close(fd)


def files_below(root: Path, *parts: str) -> list[str]:
    """The paths, relative to `root/parts` (a session's folder in a tree), of the regular files
    below it, down to MAX_DEPTH levels (deeper ones cannot be ours)."""
    fd = open_folder(root, *parts)
    if fd is None:
        return []
    try:
        return list(_walk(fd, ""))
    finally:
        os.close(fd)


def open_folder(root: Path, *parts: str) -> int | None:
    """A descriptor on `root/parts`: `root` as configured (a link there is the operator's),
    the parts below it entered without following any link."""
    try:
        fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for part in parts:
        child = _child(fd, part)
        os.close(fd)
        if child is None:
            return None
        fd = child
    return fd


def make_folder(root: Path, *parts: str) -> int:
    """A descriptor on `root/parts`, making the folders that are missing; whatever stands in
    the way and is not a real folder (a symbolic link, a file) is set aside (`reading`), never
    followed. Raises OSError when NFS fails."""
    try:
        fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
    done: list[str] = []
    try:
        for part in parts:
            for _ in range(_ATTEMPTS):
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                    break
                except FileNotFoundError:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: open it
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    path = root.joinpath(*done, part)
                    aside = set_aside(path, "unusable", root=root, dir_fd=fd)
                    logger.error("%s is not a real folder; set aside as %s", path, aside)
            else:
                raise OSError(errno.EAGAIN, f"{root.joinpath(*done, part)} keeps being replaced")
            os.close(fd)
            fd = child
            done.append(part)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _entries(fd: int) -> list[Entry]:
    with os.scandir(fd) as it:
        found = [
            (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it
        ]
    return sorted(found)


def _walk(fd: int, prefix: str, depth: int = 1) -> Iterator[str]:
    for name, is_dir, is_file in _entries(fd):
        if is_file:
            yield prefix + name
        elif is_dir and depth < MAX_DEPTH:
            child = _child(fd, name)
            if child is not None:
                try:
                    yield from _walk(child, f"{prefix}{name}/", depth + 1)
                finally:
                    os.close(child)


def _child(fd: int, name: str) -> int | None:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except OSError:
        return None  # gone, or swapped for a link since it was listed


def prune_empty_dirs(root: Path, keep: Callable[[str, str], bool], *parts: str) -> int:
    """Remove empty folders below `root/parts/<date>/<session>/` (then the session and date
    folders when they are empty) unless `keep(date, session)`. Returns how many were removed."""
    top = open_folder(root, *parts)
    if top is None:
        return 0
    removed = 0
    try:
        for date, is_dir, _ in _entries(top):
            if not is_dir or not DATE_DIR_RE.fullmatch(date):
                continue
            date_fd = _child(top, date)
            if date_fd is None:
                continue
            try:
                for session, session_is_dir, _ in _entries(date_fd):
                    if session_is_dir and not keep(date, session):
                        removed += _prune(date_fd, session)
            finally:
                os.close(date_fd)
            removed += _rmdir(top, date)
    finally:
        os.close(top)
    return removed


def remove_empty_tree(root: Path, *parts: str) -> int:
    """Remove `root/parts` and the folders below it if none of them holds anything but empty
    folders (bottom up, down to MAX_DEPTH levels; a file anywhere keeps its folders). Returns
    how many were removed."""
    *above, name = parts
    parent = open_folder(root, *above)
    if parent is None:
        return 0
    try:
        return _prune(parent, name)
    finally:
        os.close(parent)


def _prune(parent: int, name: str, depth: int = 1) -> int:
    """Remove the empty folders in `parent/name`, bottom up, then the folder itself if empty
    (down to MAX_DEPTH levels: deeper folders are not ours)."""
    fd = _child(parent, name)
    if fd is None:
        return 0
    removed = 0
    try:
        for entry, is_dir, _ in _entries(fd):
            if is_dir and depth < MAX_DEPTH:
                removed += _prune(fd, entry, depth + 1)
    finally:
        os.close(fd)
    return removed + _rmdir(parent, name)


def _rmdir(parent: int, name: str) -> int:
    try:
        os.rmdir(name, dir_fd=parent)
        return 1
    except OSError:
        return 0  # not empty, or gone, or not a folder: all fine
