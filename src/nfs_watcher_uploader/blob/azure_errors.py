"""What an answer from Azure means for the caller: retry later, give up on this file, the name
is taken, this credential may not do that, or start-up can never succeed. The one place that
maps the SDK's errors.

While uploading (`classify`):

    RetryableError    5xx, 408, 429, 401/403 while a token or key is being rotated, 404 while
                      the container is recreated, network errors, timeouts
    IntegrityError    Md5Mismatch: the bytes that arrived differ from the bytes read from NFS
    PermanentError    a name or a size that no retry can make Azure accept

At start-up, the answers that no retry can change (`stop_line`, `refused_for_good`), which end
it with CannotStart and a line that says what to check. Only storage's own answers count
(`from_storage`: they carry its x-ms-request-id); a proxy's or a gateway's 4xx says nothing
about the credential, the container or the account, and its rules may change at any time:

    400 (any code)                 the same request is refused the same way every time;
                                   InvalidResourceName and OutOfRangeInput name the container
    404 ResourceNotFound           no such account at the URL (not ContainerNotFound, which an
                                   administrator may still fix by creating it)
    a host name that does not      DNS answered that the name does not exist (EAI_NONAME), as
    exist                          for a mistyped account name; "try again later" answers
                                   (EAI_AGAIN, no DNS server) are retried
    401/403 with a fixed           a SAS, a connection string or an account key never changes
    credential that storage        while the process runs: storage failed to authenticate it
    failed to authenticate         (a wrong key or signature, an expired SAS), or it lacks a
                                   permission, so it is refused for good. Start-up stops only
                                   when every credential tried is (with APP_AZURE_AUTH=auto, a
                                   refused one hands over to the next); an identity may be
                                   granted its role later, so never is

    Not for good, though refused: what an administrator changes on the account with nothing
    changed on the device (its network rules, `ACCOUNT_RULES`: a firewall rule not added yet),
    and a SAS whose start time is ahead of the clock or within CLOCK_SKEW_S of it (valid soon:
    generated for later, or on a clock ahead of storage's). Start-up waits for those, saying why.

Connection errors, timeouts, 5xx, 408 and 429 stay what they were at start-up too: retried for
as long as it takes. Lines quote the service's error code and its first line, never a secret.
"""

import socket
import time
from typing import cast
from urllib.parse import urlsplit

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import CLOCK_SKEW_S
from nfs_watcher_uploader.errors import IntegrityError, PermanentError, RetryableError, UploadError
from nfs_watcher_uploader.items import blob_name_problem
from nfs_watcher_uploader.redaction import redact

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
# The credentials that stay the same while the process runs (`credentials.candidates` labels).
FIXED_CREDENTIALS = frozenset({"sas", "connection-string", "account-key"})
# 403 codes of rules an administrator sets on the storage account, which may let the device in
# at any time with nothing changed on it: network rules (AuthorizationFailure, "This request is
# not authorized to perform this operation."), shared key access turned off, the account
# disabled, a SAS's IP range (the device's address may come back into it).
ACCOUNT_RULES = frozenset(
    {
        "AuthorizationFailure",
        "KeyBasedAuthenticationNotPermitted",
        "AccountIsDisabled",
        "AuthorizationSourceIPMismatch",
    }
)
# The header of every answer Azure Storage gives (Azurite's too), and of no proxy's.
STORAGE_REQUEST_ID = "x-ms-request-id"
# Azurite answers a wrong signature with AuthorizationFailure, Azure with AuthenticationFailed;
# both say this.
_NOT_AUTHENTICATED = "failed to authenticate the request"
# 400 codes that name the container: its name breaks Azure's rules.
_CONTAINER_CODES = frozenset({"InvalidResourceName", "OutOfRangeInput"})
_WHAT_TO_CHECK = {
    "sas": "APP_AZURE_SAS_TOKEN (its signature, expiry, start time and permissions)",
    "connection-string": "the AccountKey or SharedAccessSignature in APP_AZURE_CONNECTION_STRING",
    "account-key": "APP_AZURE_ACCOUNT_KEY and APP_AZURE_ACCOUNT_NAME",
}


def check_blob_name(name: str) -> None:
    """Raise PermanentError for a name Azure would refuse, or store as another name, whatever
    we do (`items.blob_name_problem`)."""
    if (problem := blob_name_problem(name)) is not None:
        raise PermanentError(problem)


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
    """The class, status, error code and first line of an error, for a log line or last_error;
    without the URL's query (a SAS) or user that libraries quote in their messages."""
    text = redact(str(exc)).strip().splitlines()
    first = text[0] if text else ""
    status = getattr(exc, "status_code", None)
    code = error_code(exc)
    prefix = type(exc).__name__ + (f" {status}" if status else "") + (f" {code}" if code else "")
    return f"{prefix}: {first[:300]}" if first else prefix


def from_storage(exc: BaseException) -> bool:
    """`exc` is an answer of Azure Storage (or Azurite) itself: it carries the request id
    storage gives every answer. A proxy in between answers without it."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers is not None and STORAGE_REQUEST_ID in headers


def stop_line(exc: BaseException, settings: Settings) -> str | None:
    """The line that ends start-up when `exc` (not a refusal of the credential) can never
    heal; None when it may (retry)."""
    code = error_code(exc)
    if (
        isinstance(exc, HttpResponseError)
        and not isinstance(exc, ClientAuthenticationError)
        and from_storage(exc)
    ):
        status = exc.status_code
        if status == 400:
            if code in _CONTAINER_CODES:
                return (
                    f"storage refuses the container name {settings.azure_container!r} (400 "
                    f"{code}): check APP_AZURE_CONTAINER against Azure's rules (3 to 63 lowercase "
                    "letters, digits and single hyphens)"
                )
            return (
                f"storage refuses the service's requests (400 {code}): check "
                "APP_AZURE_ACCOUNT_URL and APP_AZURE_CONTAINER"
            )
        if status == 404 and code == "ResourceNotFound":
            return (
                f"storage answers 404 ResourceNotFound for the account at "
                f"{settings.azure_account_url}: check the account name in APP_AZURE_ACCOUNT_URL "
                "(and in APP_AZURE_CONNECTION_STRING, if set)"
            )
    if (host := _unknown_host(exc, urlsplit(settings.azure_account_url).hostname)) is not None:
        return (
            f"the storage host {host} does not exist (DNS): check the account name in "
            "APP_AZURE_ACCOUNT_URL (and in APP_AZURE_CONNECTION_STRING, if set)"
        )
    return None


def refused_for_good(
    exc: BaseException, label: str, valid_from: float | None = None, now: float | None = None
) -> bool:
    """Storage refused credential `label` (401/403) and will refuse it the same way until the
    process is restarted with another. `valid_from` is the credential's start time (a SAS's
    `st`), judged against `now`."""
    if label not in FIXED_CREDENTIALS:
        return False
    if not (isinstance(exc, HttpResponseError) and exc.status_code in (401, 403)):
        return False
    if not from_storage(exc):
        return False  # a proxy's refusal: its rules may let the device through later
    if error_code(exc) in ACCOUNT_RULES and _NOT_AUTHENTICATED not in str(exc).lower():
        return False  # the account's rules: an administrator may let the device in
    now = time.time() if now is None else now
    return valid_from is None or valid_from <= now - CLOCK_SKEW_S


def every_credential_refused(failures: list[str], labels: list[str]) -> str:
    """The line that ends start-up when each credential in `labels` was refused for good."""
    check = "; ".join(_WHAT_TO_CHECK[label] for label in dict.fromkeys(labels))
    return "storage refuses every credential for good (" + "; ".join(failures) + f"): check {check}"


def _unknown_host(exc: BaseException, default: str | None) -> str | None:
    """The host name when, somewhere in `exc`'s chain, DNS said the name does not exist (aiohttp
    names the host it asked for; else `default`)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    host, unknown = default, False
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(named := getattr(current, "host", None), str):
            host = named
        if isinstance(current, socket.gaierror) and current.errno == socket.EAI_NONAME:
            unknown = True
        for attr in ("__cause__", "__context__", "inner_exception", "os_error"):
            nxt = getattr(current, attr, None)
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return (host or "?") if unknown else None
