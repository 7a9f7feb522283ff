"""What an answer from Azure means for the caller: retry later, give up on this file, the name
is taken, or this credential may not do that. The one place that maps the SDK's errors.

    RetryableError    5xx, 408, 429, 401/403 while a token or key is being rotated, 404 while
                      the container is recreated, network errors, timeouts
    IntegrityError    Md5Mismatch: the bytes that arrived differ from the bytes read from NFS
    PermanentError    a name or a size that no retry can make Azure accept
"""

from typing import cast

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from nfs_watcher_uploader.constants import MAX_BLOB_NAME, MAX_BLOB_PATH_SEGMENTS
from nfs_watcher_uploader.errors import IntegrityError, PermanentError, RetryableError, UploadError

# 4xx answers that no retry can turn into a success. Everything else is retried.
_PERMANENT_CODES = frozenset(
    {"InvalidResourceName", "InvalidUri", "OutOfRangeInput", "InvalidBlobOrBlock", "InvalidInput"}
)
_PERMANENT_STATUS = frozenset({413, 414})
# What Azure answers a create with If-None-Match: * when the name is taken.
TAKEN_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
# What Azure answers a request the credential is valid for but not allowed to make (a read with
# a `cw` SAS, say).
NOT_PERMITTED = "AuthorizationPermissionMismatch"


def check_blob_name(name: str) -> None:
    """Raise PermanentError for a name Azure would refuse whatever we do."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentError("file name is not valid UTF-8, so it cannot be a blob name") from None
    if len(name) > MAX_BLOB_NAME:
        raise PermanentError(f"blob name is {len(name)} characters; Azure allows {MAX_BLOB_NAME}")
    if name.count("/") + 1 > MAX_BLOB_PATH_SEGMENTS:
        raise PermanentError(f"blob name has more than {MAX_BLOB_PATH_SEGMENTS} path segments")
    if name.endswith((".", "/", "\\")):
        raise PermanentError("blob names must not end with '.', '/' or '\\'")


def classify(exc: BaseException) -> UploadError:
    """Map any exception raised while uploading to retry-later or give-up."""
    while isinstance(exc, BaseExceptionGroup):
        # Parallel blocks: the first failure speaks for the file.
        exc = cast(BaseExceptionGroup[BaseException], exc).exceptions[0]
    if isinstance(exc, UploadError):
        return exc
    text = summary(exc)
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = exc.status_code or 0
        code = error_code(exc)
        # Azure answers Md5Mismatch; Azurite answers InvalidOperation "contentMD5 doesn't match".
        if code == "Md5Mismatch" or (status == 400 and "contentmd5" in str(exc).lower()):
            return IntegrityError(f"storage received bytes that differ from NFS: {text}")
        if status in _PERMANENT_STATUS or (status == 400 and code in _PERMANENT_CODES):
            return PermanentError(f"storage refused the blob: {text}")
    return RetryableError(text)


def error_code(exc: BaseException) -> str | None:
    """The service's error code as a plain string (the SDK gives a str Enum, which hashes by
    member name, so it would never match a set of strings)."""
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))


def not_permitted(exc: BaseException) -> bool:
    """The credential is good but may not make this request (a read with a `cw` SAS)."""
    return error_code(exc) == NOT_PERMITTED


def refused(exc: BaseException) -> bool:
    """Storage (or the identity) refused this credential: the next one may do."""
    return isinstance(exc, ClientAuthenticationError) or (
        isinstance(exc, HttpResponseError) and exc.status_code in (401, 403)
    )


def summary(exc: BaseException) -> str:
    """The class, status, error code and first line of an error, for a log line or last_error."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    status = getattr(exc, "status_code", None)
    code = error_code(exc)
    prefix = type(exc).__name__ + (f" {status}" if status else "") + (f" {code}" if code else "")
    return f"{prefix}: {first[:300]}" if first else prefix
