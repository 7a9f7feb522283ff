"""What can go wrong in coordination, and what the caller should do about it.

    CoordError
     +-- ControlUnavailable   storage cannot answer now (network, timeout, 5xx, 408, 429, a
     |                        credential being rotated): try again later. A member whose
     |                        validity ends meanwhile claims nothing until a renew goes through.
     +-- ControlRefused       storage refuses what no waiting can fix (an invalid name, a
     |                        credential without the permission): stop with a line naming it.
     +-- IncarnationLost      this member's lease is gone or taken, or its blob was adopted or
     |                        removed: claim nothing more and never take the lease again; start
     |                        over as a new incarnation (or exit non-zero).
     +-- StateTooNew          the shared session state was written by a newer version of the
                              service: change nothing (a rolling upgrade is under way).

The state's rules raise `errors.SessionConflict` (HTTP 409), as in single-replica mode.

`classify` maps what the SDK or the network raised to the first two; every message goes
through `redact` first, and callers raise `from None`, so that no SAS (which travels in the
URL's query) or key reaches a log line, an error text or a traceback.
"""

import re

import requests
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

# 4xx answers about the request itself: sending it again cannot help.
_REFUSED_CODES = frozenset(
    {
        "InvalidResourceName",
        "InvalidUri",
        "InvalidHeaderValue",
        "InvalidMetadata",
        "InvalidInput",
        "OutOfRangeInput",
        "AuthorizationPermissionMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationFailure",
    }
)
_SECRETS = (
    re.compile(r"(?i)(\bsig=)[^&\s\"'<>]+"),
    re.compile(r"(?i)(AccountKey=)[^;\s\"'<>]+"),
    re.compile(r"(?i)(SharedAccessSignature=)[^;\s\"'<>]+"),
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]+"),
    re.compile(r"(://)[^/?#@\s\"'<>]+(?=@)"),
)
_SUMMARY_MAX = 300
# What a control request may raise that says something about storage or the network (anything
# else is a bug, and is not taken for an outage).
STORAGE_ERRORS = (AzureError, requests.RequestException, OSError)


def redact(text: str) -> str:
    """`text` with every SAS signature, account key, token and a URL's user and password
    replaced by REDACTED."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1REDACTED", text)
    return text


class CoordError(Exception):
    """Base class; the message is redacted when the error is made."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ControlUnavailable(CoordError):
    """Try again later."""


class ControlRefused(CoordError):
    """No retry can help: stop and name the setting to fix."""


class IncarnationLost(CoordError):
    """This incarnation is over."""


class StateTooNew(CoordError):
    """Written by a newer version: read it if you can, change nothing."""


def error_code(exc: BaseException) -> str | None:
    """The service's error code as a plain string (the SDK gives a str Enum)."""
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))


def status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", 0) or 0)


def summary(exc: BaseException) -> str:
    """One redacted line: the exception's type, status, code and the first line of its text."""
    lines = str(exc).strip().splitlines()
    status, code = status_of(exc), error_code(exc)
    prefix = type(exc).__name__ + (f" {status}" if status else "") + (f" {code}" if code else "")
    first = redact(lines[0])[:_SUMMARY_MAX] if lines else ""
    return f"{prefix}: {first}" if first else prefix


def classify(exc: BaseException, doing: str) -> CoordError:
    """What the caller should do about `exc`, raised while `doing` something: refused when
    no retry can help, unavailable otherwise (as the upload path treats storage)."""
    if isinstance(exc, CoordError):
        return exc
    text = f"{doing}: {summary(exc)}"
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = status_of(exc)
        if status in (413, 414) or (status in (400, 403) and error_code(exc) in _REFUSED_CODES):
            return ControlRefused(text)
    return ControlUnavailable(text)
