"""What can go wrong with one file, and what the caller should do about it.

    UploadError
     +-- RetryableError    transient (network, 5xx/408/429, auth, NFS EIO/ESTALE, ENOSPC on
     |    |                staging): keep the file where it is and try again after a backoff.
     |    +-- IntegrityError   the bytes sent do not hash to the MD5 taken while copying.
     |    +-- CompletionPending  the blob is committed; only the "completed" rename failed.
     +-- PermanentError    cannot succeed by retrying (invalid blob name, too large for a block
                           blob, source vanished): park the file with its reason, never delete it.

    NotOurs                the entry is not a regular file (a symbolic link, a FIFO, a device)
                           or sits behind a symbolic link: leave it where it is, report it,
                           never read, park or delete it.

Losing a claim race (another claimant took the file) is not an error: `fsops.move` answers
GONE and the file is simply skipped.
"""


class UploadError(Exception):
    """Base class for per-file failures."""


class RetryableError(UploadError):
    """Try again later: nothing about the file itself is wrong."""


class IntegrityError(RetryableError):
    """The bytes that went out differ from the bytes that were copied."""


class CompletionPending(RetryableError):
    """The blob is committed but the file could not be marked completed: retry only that."""


class PermanentError(UploadError):
    """Retrying cannot help; park the file and tell the operator why."""


class NotOurs(Exception):
    """Not a regular file of ours: leave it alone and say so."""
