"""Reading back what the service keeps on the share. Every state, job, ledger and reason file
(and the API token file) is read here, because anyone who can write the share can put anything
in its place: a symbolic link, a FIFO, a device, a huge or deeply nested file, a path with `..`.

    open    O_NOFOLLOW | O_NONBLOCK: no symbolic link is followed, a FIFO cannot block the open
    check   on the descriptor (fstat): a regular file, of at most the kind's size cap
    read    at most the cap
    parse   (`parse_json`) nesting bounded before any parser recurses; every error a parser can
            raise is caught; the model checks the shape and the meaning (a path inside its
            session, a name that can be a blob), through the types below (`SessionName`,
            `DatePrefix`, `Generation`, `Time`), so that each value means one thing wherever
            it is read back

Whatever fails is `Unusable` (a ValueError that says why): the caller sets the file aside
(`set_aside`: never over another file) with one line naming it, and goes on without it. A file
that is not there reads as None; an NFS error is raised as the OSError it is (try again).
"""

import errno
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, FiniteFloat, NonNegativeInt, ValidationError

from nfs_watcher_uploader.constants import (
    DATE_DIR_RE,
    GENERATION_AHEAD_MAX_S,
    JSON_DEPTH_MAX,
    SET_ASIDE_DIR,
)
from nfs_watcher_uploader.items import check_session_name
from nfs_watcher_uploader.nfs.moves import Moved, move
from nfs_watcher_uploader.nfs.opening import READ_FLAGS, kind_of

_CHUNK = 1024 * 1024
# Brackets, and strings as a whole (a bracket inside one is not nesting). Matched left to right
# without going back, so the scan is linear whatever the bytes (an unterminated string runs to
# the end).
_TOKENS = re.compile(rb'[\[\]{}]|"(?:[^"\\]|\\.)*"?', re.S)


class Unusable(ValueError):
    """Not a file the service can use (why: the message). Set it aside and go on."""


def _date_prefix(date: str) -> str:
    if not DATE_DIR_RE.fullmatch(date):
        raise ValueError("a date prefix is YYYYMMDD")
    return date


def _not_ahead(generation: int) -> int:
    # A generation is a time in microseconds (`reports`): a manifest line claiming one far
    # ahead is not ours, and would keep every later end of its session from being reported.
    # (Only where skipping it costs nothing: a ledger line; a job or the state file read back
    # on a device whose clock starts behind must still be used.)
    if generation > (time.time() + GENERATION_AHEAD_MAX_S) * 1_000_000:
        raise ValueError(f"a generation from the future ({generation})")
    return generation


# What the values of a file read back must mean. A session's name and date become folders on
# the share and segments of blob names: one that is not a session name could lead out of its
# folder or into another session's.
SessionName = Annotated[str, AfterValidator(check_session_name)]
DatePrefix = Annotated[str, AfterValidator(_date_prefix)]
Generation = Annotated[NonNegativeInt, AfterValidator(_not_ahead)]
# A time in seconds that can be formatted and compared (never NaN nor infinite).
Time = FiniteFloat


def read_regular(path: Path | str, limit: int, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of the regular file `path` (relative to `dir_fd` if given), None when there is
    none. Raises Unusable for anything but a regular file of at most `limit` bytes (a symbolic
    link is never followed, a FIFO never waited on), OSError when NFS fails."""
    fd = _open(path, dir_fd)
    if fd is None:
        return None
    try:
        _check(fd, limit)
        parts: list[bytes] = []
        got = 0
        while got <= limit and (chunk := os.read(fd, min(_CHUNK, limit + 1 - got))):
            parts.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > limit:
        raise Unusable(f"it grew past {limit} bytes while it was read")
    return b"".join(parts)


def read_lines(
    path: Path | str, limit: int, line_limit: int, *, dir_fd: int | None = None
) -> Iterator[bytes | None] | None:
    """The lines of the regular file `path` (checked as `read_regular` does; read in chunks,
    never whole), or None when there is none. A line longer than `line_limit` comes as None."""
    fd = _open(path, dir_fd)
    if fd is None:
        return None
    try:
        _check(fd, limit)
    except BaseException:
        os.close(fd)
        raise
    return _lines(fd, limit, line_limit)


def _lines(fd: int, limit: int, line_limit: int) -> Iterator[bytes | None]:
    try:
        pending, got, too_long = b"", 0, False
        while chunk := os.read(fd, _CHUNK):
            got += len(chunk)
            if got > limit:
                raise Unusable(f"it grew past {limit} bytes while it was read")
            *whole, pending = (pending + chunk).split(b"\n")
            for line in whole:
                yield None if too_long or len(line) > line_limit else line
                too_long = False
            if len(pending) > line_limit:  # skip the rest of a line too long to be ours
                pending, too_long = b"", True
        if pending or too_long:
            yield None if too_long else pending
    finally:
        os.close(fd)


def _open(path: Path | str, dir_fd: int | None) -> int | None:
    try:
        return os.open(path, READ_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unusable("a symbolic link, not a regular file") from None
        raise


def _check(fd: int, limit: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Unusable(f"a {kind_of(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise Unusable(
            f"{st.st_size} bytes; no file of this kind the service writes exceeds {limit}"
        )


def check_depth(raw: bytes, limit: int = JSON_DEPTH_MAX) -> None:
    """Raise Unusable when the JSON in `raw` nests deeper than `limit`, before any parser
    recurses into it (the standard library's raises RecursionError; ours never should)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return  # cannot nest deeper than it has brackets
    depth = 0
    for token in _TOKENS.finditer(raw):
        kind = token[0][:1]
        if kind in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise Unusable(f"JSON nested deeper than {limit} levels")
        elif kind in (b"]", b"}"):
            depth -= 1


def parse_json[M: BaseModel](raw: bytes, model: type[M]) -> M:
    """`raw` as `model` (its shape and, through its validators, its meaning); Unusable naming
    the first problem otherwise, whatever the bytes are."""
    check_depth(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        raise Unusable(f"{where + ': ' if where else ''}{first['msg']}") from None
    except (ValueError, RecursionError, ArithmeticError) as exc:
        raise Unusable(f"not JSON of ours ({type(exc).__name__})") from None


def set_aside_or_leave(path: Path, root: Path, dir_fd: int | None = None) -> str:
    """`set_aside` a file read back that is unusable into `root/_set_aside/`, and say where it
    went; when NFS will not move it (or a link sits where `_set_aside` should be, across
    filesystems), say that it stays: it is refused again at its next reading, never waited on
    or followed, so nothing more is lost by leaving it."""
    try:
        return f"set aside as {set_aside(path, 'unusable', root=root, dir_fd=dir_fd)}"
    except OSError as exc:
        return f"cannot be set aside ({exc.strerror or exc}), left where it is"


def set_aside(
    path: Path, label: str, *, root: Path | None = None, dir_fd: int | None = None
) -> Path:
    """Move a file the service cannot use out of the way, never over another file; return
    where it went. Beside it as `<name>.<label>-<ns>`; or, for a file in one of the trees under
    `root` (the processing root), to `root/_set_aside/<its path>.<label>-<ns>`, where nothing
    reads it as one of the tree's files. A symbolic link is moved itself, never its target.
    With `dir_fd` (the folder it was read through, entered without following links), the file
    is its name in that folder."""
    there = path if root is None else root / SET_ASIDE_DIR / path.relative_to(root)
    src = path if dir_fd is None else path.name
    while True:
        aside = there.with_name(f"{there.name}.{label}-{time.time_ns()}")
        if move(src, aside, src_dir_fd=dir_fd) is not Moved.TAKEN:
            return aside
