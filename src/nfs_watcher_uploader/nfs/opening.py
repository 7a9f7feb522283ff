"""Opening what is on the share without following anything: folders by descriptor, regular
files only (a symbolic link, a FIFO or a device raises `NotOurs` and is left where it is)."""

import errno
import fcntl
import os
import stat
from pathlib import Path

from nfs_watcher_uploader.errors import NotOurs

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def kind_of(mode: int) -> str:
    """What a non-regular entry is, in words for a log line."""
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "special file"


def open_dir(folder: Path, parts: list[str]) -> int:
    """A descriptor on `folder`/`parts`, entering no symbolic link on the way (NotOurs if one
    is there; FileNotFoundError if a part is missing)."""
    try:
        fd = os.open(folder, DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotOurs(f"{folder} is not a real folder") from None
        raise
    for part in parts:
        try:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotOurs(f"folder {part!r} is a symbolic link or a file") from None
            raise
        os.close(fd)
        fd = child
    return fd


def open_regular(path: Path) -> int:
    """Open `path` for reading if it is a regular file: no symbolic link is followed and a FIFO
    cannot block the open (O_NONBLOCK); the type is checked on the descriptor itself."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOurs("a symbolic link, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotOurs(f"a {kind_of(mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(root: Path, parts: list[str], limit: int) -> bytes | None:
    """The bytes of the regular file root/parts, reached without following any link below
    `root`; None when it is missing, not a regular file, or larger than `limit` bytes (not a
    file of ours). For what the service reads back from the share."""
    *folders, name = parts
    try:
        dir_fd = open_dir(root, folders)
    except (FileNotFoundError, NotADirectoryError, NotOurs):
        return None
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
            return None
        raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1024 * 1024))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > limit else data
    finally:
        os.close(fd)
