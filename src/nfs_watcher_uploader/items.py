"""The domain's items: a piece of work (one file), the pipeline's counters, a parked file, the
rules for session names, paths and blob names, and `printable`, through which every name
reaches a log or an answer (`error_text` for an error's text). Plain data, no I/O: every layer
above may use them."""

import itertools
import os
from dataclasses import dataclass, field
from typing import Literal

from nfs_watcher_uploader.constants import (
    MANIFEST_SUFFIX,
    MAX_BLOB_NAME,
    MAX_BLOB_PATH_SEGMENTS,
    NAME_MAX,
    SESSION_NAME_MAX,
    SESSION_NAME_RE,
)
from nfs_watcher_uploader.redaction import redact


def log_extra(item: "WorkItem") -> dict[str, str]:
    """The fields every log line about a file carries (`file_name` made printable)."""
    return {"file_name": printable(item.rel), "session_name": item.session_name}


# Where the file of a piece of work lies: still in incoming, claimed into the processing
# root, or in the completed tree (committed by a previous run, to be checked once more).
Where = Literal["incoming", "claimed", "completed"]
_tickets = itertools.count(1)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One file to upload: `rel` is its path below `incoming/<session>/` ('cam2/rec1.bin').
    `claimed` is False while it still sits in incoming; `Layout` says where it is.
    `ticket` names this piece of work through its retries (`replace` keeps it)."""

    session_name: str
    date_prefix: str
    rel: str
    claimed: bool
    # (size, mtime_ns) the watcher saw: lets a claim retried after a timeout recognise that
    # the earlier, abandoned attempt did move the file.
    seen: tuple[int, int] | None = None
    attempt: int = 0
    # (size, mtime_ns) of the bytes committed, once the blob is: only the "completed" rename
    # is left to do, after checking that the file still has that size and mtime.
    committed: tuple[int, int] | None = None
    # The blob it goes to, once that is not the default `<date>/<session>/<rel>`: a name
    # conflict chose another, or a late write sends the whole file again over the same blob.
    blob_name: str | None = None
    overwrite: bool = False
    # In the completed tree (`rel` is then its path there, below `<date>/<session>/`).
    completed: bool = False
    ticket: int = field(default_factory=lambda: next(_tickets))
    # The MD5 of the bytes committed, and whether the session's ledger has their line yet.
    md5: bytes | None = None
    recorded: bool = False
    # The blob's ETag after the commit (or as found with these bytes): what a rewrite of the
    # blob (the whole file again, after a late write) is conditional on. None: not known.
    etag: str | None = None

    @property
    def place(self) -> tuple[Where, str]:
        """Which file this is. Two pieces of work never hold the same place."""
        where: Where = "completed" if self.completed else "claimed" if self.claimed else "incoming"
        return where, self.rel


def printable(text: str) -> str:
    """`text` with everything that is not printable escaped: the bytes of a file name that is
    not valid UTF-8 (which Python holds as lone surrogates) as \\xNN, control characters as
    \\n, \\x00 and so on. Names reach JSON and logs only through this."""
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def error_text(text: str) -> str:
    """An error's text as it may reach a log line, an answer or a span: no credential (a URL's
    query string, say: `redaction`), nothing unprintable."""
    return printable(redact(text))


def path_problem(rel: str) -> str | None:
    """Why `rel` cannot be the path of a file below its session folder ('cam2/rec1.bin'), or
    None: it must stay inside the folder (relative, no empty, '.' or '..' segment), and each
    segment must be a file name (no NUL, at most NAME_MAX bytes). Checked wherever such a path
    is read back from the share, before it is joined to a folder."""
    if not rel:
        return "an empty path"
    if rel.startswith("/"):
        return "an absolute path"
    parts = rel.split("/")
    if len(parts) > MAX_BLOB_PATH_SEGMENTS:
        return f"more than {MAX_BLOB_PATH_SEGMENTS} path segments"
    for part in parts:
        if part in ("", ".", ".."):
            return "an empty, '.' or '..' path segment (it would point elsewhere)"
        if "\0" in part:
            return "a NUL character"
        if len(os.fsencode(part)) > NAME_MAX:
            return f"a path segment longer than {NAME_MAX} bytes"
    return None


def blob_name_problem(name: str) -> str | None:
    """Why Azure would store a blob under another name than `name`, or refuse it; None when
    `name` can be a blob's name as it is. One rule set, used wherever a name is made or read
    back (the upload, its `~2` versions, the ledger, verify):
    https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8, so it cannot be a blob name"
    if len(name) > MAX_BLOB_NAME:
        return f"blob name is {len(name)} characters; Azure allows {MAX_BLOB_NAME}"
    if name.endswith((".", "/", "\\")):
        return "blob names must not end with '.', '/' or '\\'"
    if "\\" in name:
        return "blob names must not hold '\\': storage reads it as '/', another file's name"
    segments = name.split("/")
    if len(segments) > MAX_BLOB_PATH_SEGMENTS:
        return f"blob name has more than {MAX_BLOB_PATH_SEGMENTS} path segments"
    if any(s in ("", ".", "..") for s in segments):
        return "blob names must not hold empty, '.' or '..' segments (the URL would resolve them)"
    return None


def check_session_name(name: str) -> str:
    """Return `name` if it is a safe session name, else raise ValueError naming the rule broken."""
    if name in (".", ".."):
        raise ValueError(f"session_name must not be {name!r}: it would point outside incoming")
    if len(name) > SESSION_NAME_MAX:
        raise ValueError(
            f"session_name is {len(name)} characters long; the limit is {SESSION_NAME_MAX}"
        )
    if not SESSION_NAME_RE.fullmatch(name):
        raise ValueError(
            "session_name may contain only letters A-Z and a-z, digits, '_', '.' and '-'"
        )
    return name


def is_session_name(name: str) -> bool:
    """True when `name` is a safe session name (a folder name read from NFS, say)."""
    try:
        check_session_name(name)
    except ValueError:
        return False
    return True


def is_manifest_like(session_name: str) -> bool:
    """A session of this name would have its folder where another session's manifest is
    (`<date>/x.manifest.json/...` beside `<date>/x.manifest.json`): a hierarchical namespace
    (Data Lake Storage) cannot hold both. Refused for new sessions."""
    return session_name.lower().endswith(MANIFEST_SUFFIX)


SessionStateName = Literal["active", "draining", "drained", "drain_timed_out"]


@dataclass(frozen=True, slots=True)
class ParkedFile:
    """A file parked in `_failed/`, as read back from there (names as NFS holds them)."""

    date_prefix: str
    session_name: str
    # The file's path below its session folder, as the recorder wrote it.
    path: str
    # Where it is parked below `_failed/<date>/<session>/`: the same, unless a parked file of
    # that name was already there.
    parked_as: str
    reason: str


@dataclass
class Stats:
    """The pipeline's counters, in one place: /v1/status and the metrics read them."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    last_error: str | None = None
    parked: int = 0
    retries: int = 0
    late_writes: int = 0
    dismissed: int = 0

    def __repr__(self) -> str:
        return (
            f"Stats(uploaded={self.uploaded} parked={self.parked} retries={self.retries} "
            f"late_writes={self.late_writes} dismissed={self.dismissed})"
        )

    def count_uploaded(self, size: int | None) -> None:
        self.uploaded += 1
        self.bytes_uploaded += size or 0
