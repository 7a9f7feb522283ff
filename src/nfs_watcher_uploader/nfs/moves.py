"""Renames on the share that never replace a file (`move`, `claim`, `return_to`), and the
judgement of an ambiguous NFS answer by looking at both sides, by inode."""

import enum
import errno
import os
import stat
import threading
from pathlib import Path

from nfs_watcher_uploader.errors import NotOurs
from nfs_watcher_uploader.nfs.opening import kind_of, open_dir

# Errors that say "the file (or a handle on it) is gone". On NFS, ESTALE may also be a passing
# fault, so callers look again before drawing a conclusion.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})


# Every move into a destination of ours checks "is the destination free?" and renames under this
# lock, so that no two of our own threads can both find it free. (One service instance writes a
# processing root: the Deployment's Recreate strategy.) A plain check-then-rename is used rather
# than link()+unlink(): with fs.protected_hardlinks a non-owner cannot link a recorder's file.
_MOVE_LOCK = threading.Lock()


class Moved(enum.Enum):
    DONE = "done"  # the file is now at the destination
    GONE = "gone"  # the source is gone and the destination does not hold it: someone else's
    TAKEN = "taken"  # the destination holds another file: nothing was moved
    CHANGED = "changed"  # the source is not the file that was judged complete: not moved


def exists(path: Path) -> bool:
    """Like os.path.lexists, but only a real ENOENT means "absent": ESTALE, EIO or a timeout
    raise, because on NFS they say nothing about whether the file is there."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def is_absent(name: str, dir_fd: int) -> bool:
    """Nothing has `name` in the folder `dir_fd` (a real ENOENT; other errors raise)."""
    return _lstat_retrying(name, dir_fd) is None


def is_regular(name: str, dir_fd: int) -> bool:
    """`name` in the folder `dir_fd` is a regular file (not a link to one)."""
    st = _lstat_retrying(name, dir_fd)
    return st is not None and stat.S_ISREG(st.st_mode)


def _lstat_retrying(
    path: Path | str, dir_fd: int | None = None, attempts: int = 5
) -> os.stat_result | None:
    """lstat, None for ENOENT; a stale handle is looked at again."""
    for attempt in range(attempts):
        try:
            return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _same(a: os.stat_result, b: os.stat_result | None) -> bool:
    """The same file: by inode (NFS file ids are stable), or where a filesystem renumbers
    (FUSE without use_ino), by type, size and mtime."""
    if b is None:
        return False
    if (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev):
        return True
    return (a.st_mode, a.st_size, a.st_mtime_ns) == (b.st_mode, b.st_size, b.st_mtime_ns)


def move(
    src: Path | str,
    dst: Path,
    expect: tuple[int, int] | None = None,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> Moved:
    """Rename `src` to `dst`, never over an existing file; create `dst`'s folder if missing.
    With `dst_dir_fd` (`dst`'s folder, entered without following a link: `trees.make_folder`)
    the file goes to `dst.name` in that very folder, whatever was planted on its path since.

    DONE: the file is at `dst`. GONE: `src` is gone and `dst` does not hold it (another claimant
    took it, or it was deleted). TAKEN: `dst` holds another file; nothing moved.

    An ENOENT or ESTALE from rename is ambiguous on NFS: the source may be gone, the destination
    folder missing (GC pruned it), or a retransmitted rename that already succeeded may report
    it. So the outcome is judged by looking at both sides, by inode. A move given up at its
    deadline may still happen later, in its thread: when it is tried again, a source that is
    gone and a destination with the (size, mtime) `expect`ed mean it did (DONE). All of it runs
    under one lock, so a late move and its retry never interleave.
    """
    at: Path | str = dst if dst_dir_fd is None else dst.name
    with _MOVE_LOCK:
        for _ in range(5):
            before = _lstat_retrying(src, src_dir_fd)
            if before is None:
                return Moved.DONE if _holds(_lstat_retrying(at, dst_dir_fd), expect) else Moved.GONE
            if _lstat_retrying(at, dst_dir_fd) is not None:
                return Moved.TAKEN
            try:
                os.rename(src, at, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                return Moved.DONE
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
                    return Moved.TAKEN  # a file where a folder of the path should be, or so
                if exc.errno not in GONE_ERRNOS:
                    raise
            if not _same(before, _lstat_retrying(src, src_dir_fd)):
                return Moved.DONE if _same(before, _lstat_retrying(at, dst_dir_fd)) else Moved.GONE
            if dst_dir_fd is not None:  # the folder held open was removed: the caller retries
                raise OSError(errno.ENOENT, f"folder of {dst} removed during the move")
            # The source is still there: the destination folder is missing, or a handle went
            # stale. Make sure the folder exists and try again.
            try:
                os.makedirs(dst.parent, exist_ok=True)
            except FileExistsError:
                return Moved.TAKEN  # a file stands where a folder of the path should be
    raise OSError(errno.ESTALE, f"rename kept failing: {src} -> {dst}")


def _holds(st: os.stat_result | None, expect: tuple[int, int] | None) -> bool:
    return st is not None and expect is not None and (st.st_size, st.st_mtime_ns) == expect


def claim(
    folder: Path,
    rel: str,
    dst: Path,
    expect: tuple[int, int] | None = None,
    allow_links: bool = False,
) -> Moved:
    """Move the regular file `folder`/`rel` to `dst`, never through a symbolic link, and only
    if it is the file the scan judged complete: `expect`ed (size, mtime); else CHANGED.

    The folders are entered by descriptor, so a session folder or subfolder swapped for a link
    is never followed. A source that is not a regular file raises NotOurs and stays, and so
    does a file with more than one hard link unless `allow_links`: on NFS anyone may link any
    file of the export into a session folder, a file they could not read themselves. A file
    swapped or written to between the check and the rename is put back.
    """
    *parents, name = rel.split("/")
    try:
        fd = open_dir(folder, parents)
    except FileNotFoundError:
        return Moved.GONE
    try:
        st = _lstat_retrying(name, fd)
        if st is not None:
            _check_ours(st, allow_links, "")
            if expect is not None and (st.st_size, st.st_mtime_ns) != expect:
                return Moved.CHANGED
        moved = move(name, dst, expect, src_dir_fd=fd)
        got = _lstat_retrying(dst) if moved is Moved.DONE and st is not None else None
        if st is not None and got is not None and not _same(st, got):
            put_back = _put_back(dst, name, fd)
            _check_ours(got, allow_links, ", swapped in while it was claimed")
            # A file written to just now: judged again later if it could be put back; else it
            # is ours now, and the checks for late writes guard it.
            return Moved.CHANGED if put_back else Moved.DONE
        return moved
    finally:
        os.close(fd)


def _check_ours(st: os.stat_result, allow_links: bool, when: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotOurs(f"a {kind_of(st.st_mode)}, not a regular file{when}")
    if st.st_nlink > 1 and not allow_links:
        raise NotOurs(
            f"a file with {st.st_nlink} hard links: it may belong to someone else"
            f"{when} (APP_ALLOW_HARD_LINKS=true takes such files)"
        )


def _put_back(src: Path, name: str, dir_fd: int) -> bool:
    """Return something that is not ours to where it came from, if that name is still free."""
    with _MOVE_LOCK:
        if _lstat_retrying(name, dir_fd) is not None:
            return False
        os.rename(src, name, dst_dir_fd=dir_fd)
        return True


def return_to(src: Path, dst: Path) -> bool:
    """Move an entry that is not ours (found in .processing) back to incoming, never over
    anything; False when the name there is taken (then it stays where it is)."""
    with _MOVE_LOCK:
        if _lstat_retrying(dst) is not None:
            return False
        os.makedirs(dst.parent, exist_ok=True)
        os.rename(src, dst)
        return True
