"""Walking and pruning `<root>/<date>/<session>/` trees (processing, parked, completed, staging),
in name order, never following a link."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from nfs_watcher_uploader.constants import (
    DATE_DIR_RE,
)


def iter_tree_files(root: Path) -> Iterator[tuple[str, str, str, Path]]:
    """Yield (date_prefix, session_name, rel, path) for regular files anywhere below
    `root/<YYYYMMDD>/<session>/`, in name order; symbolic links are not followed."""
    for date_dir in date_dirs(root):
        for session_dir in listdir(Path(date_dir.path)):
            if session_dir.is_dir(follow_symlinks=False):
                for rel, path in _walk_files(Path(session_dir.path), ""):
                    yield date_dir.name, session_dir.name, rel, path


def date_dirs(root: Path) -> list[os.DirEntry[str]]:
    """The `<YYYYMMDD>` folders of `root` (real folders, not links to one), in name order."""
    return [
        entry
        for entry in listdir(root)
        if DATE_DIR_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
    ]


def listdir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of `folder` in name order; none if it is missing."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def files_below(folder: Path) -> list[str]:
    """The paths, relative to `folder`, of the regular files anywhere below it."""
    return [rel for rel, _ in _walk_files(folder, "")]


def _walk_files(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for entry in listdir(folder):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file(follow_symlinks=False):
            yield prefix + entry.name, Path(entry.path)


def prune_empty_dirs(root: Path, keep: Callable[[str, str], bool]) -> int:
    """Remove empty folders below `root/<date>/<session>/` (then the session and date folders
    when they are empty) unless `keep(date, session)`. Returns how many were removed."""
    removed = 0
    for date_dir in date_dirs(root):
        for session_dir in listdir(Path(date_dir.path)):
            if session_dir.is_dir(follow_symlinks=False) and not keep(
                date_dir.name, session_dir.name
            ):
                removed += _prune(Path(session_dir.path))
        removed += _rmdir(Path(date_dir.path))
    return removed


def _prune(folder: Path) -> int:
    """Remove the empty folders in `folder`, bottom up, then `folder` itself if empty."""
    removed = 0
    for entry in listdir(folder):
        if entry.is_dir(follow_symlinks=False):
            removed += _prune(Path(entry.path))
    return removed + _rmdir(folder)


def _rmdir(folder: Path) -> int:
    try:
        os.rmdir(folder)
        return 1
    except OSError:
        return 0  # not empty, or gone: both fine
