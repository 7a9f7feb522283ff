"""What can go wrong, and what the caller should do about it.

    UploadError            one file failed
     +-- RetryableError    transient (network, 5xx/408/429, auth, NFS EIO/ESTALE, ENOSPC on
     |    |                staging): keep the file where it is and try again after a backoff.
     |    +-- IntegrityError   the bytes sent do not hash to the MD5 taken while reading NFS.
     |    +-- CompletionPending  the blob is committed; only the "completed" rename is left.
     +-- PermanentError    cannot succeed by retrying (invalid blob name, too large for a block
     |                     blob, source vanished): park the file with its reason, never delete it.
     +-- LateWrite         the file changed after its bytes were read: send it again, whole,
                           over the same blob.

    NotOurs                the entry is not a regular file (a symbolic link, a FIFO, a device)
                           or sits behind a symbolic link: leave it where it is, report it,
                           never read, park or delete it.
    Skip                   not an error: another claimant took the file, or a file of the same
                           name is still in progress; the watcher offers it again.
    SessionConflict        a start that conflicts with a session that exists (HTTP 409).
    CannotStart            a setting or a storage answer that no waiting can change: start-up
                           ends, with exit status 1 and a line that says what to check.

`nfs_errors` turns the OSErrors of one step into the step's UploadError, in one place.
"""

from collections.abc import Generator
from contextlib import contextmanager

from nfs_watcher_uploader.items import WorkItem


class UploadError(Exception):
    """Base class for per-file failures."""


class RetryableError(UploadError):
    """Try again later: nothing about the file itself is wrong."""


class IntegrityError(RetryableError):
    """The bytes that went out differ from the bytes that were read."""


class CompletionPending(RetryableError):
    """The blob is committed but the file could not be marked completed: retry only that,
    with `item` (which knows its blob and what was committed)."""

    def __init__(self, item: WorkItem, message: str) -> None:
        super().__init__(message)
        self.item = item


class PermanentError(UploadError):
    """Retrying cannot help; park the file and tell the operator why."""


class LateWrite(UploadError):
    """Written to after it was read: what went up is not the whole file."""

    def __init__(self, item: WorkItem) -> None:
        super().__init__(f"{item.rel} changed after it was read")
        self.item = item


class NotOurs(Exception):
    """Not a regular file of ours: leave it alone and say so."""


class Skip(Exception):
    """Not an error: the file is not ours to take now."""


class SessionConflict(Exception):
    """The request conflicts with a session that exists (HTTP 409)."""


class CannotStart(Exception):
    """Start-up cannot succeed, however long it waits; the message says what to check."""


@contextmanager
def nfs_errors(step: str, error: type[UploadError] = RetryableError) -> Generator[None]:
    """Map an OSError raised by an NFS step to `error` ("<step> failed: <why>"): on NFS a
    failure says nothing certain about the file, so the step is tried again."""
    try:
        yield
    except OSError as exc:
        raise error(f"{step} failed: {exc}") from exc
