"""Storage answers at start-up that no retry can change, and the line that says what to check.

    400 (any code)                 the same request is refused the same way every time;
                                   InvalidResourceName and OutOfRangeInput name the container
    404 ResourceNotFound           no such account at the URL (not ContainerNotFound, which an
                                   administrator may still fix by creating it)
    a host name that does not      DNS answered that the name does not exist (EAI_NONAME), as
    exist                          for a mistyped account name; "try again later" answers
                                   (EAI_AGAIN, no DNS server) are retried
    401/403 with a fixed           a SAS, a connection string or an account key never changes
    credential                     while the process runs: that credential is refused for good.
                                   Start-up stops only when every credential tried is (with
                                   APP_AZURE_AUTH=auto, a refused one hands over to the next);
                                   an identity may be granted its role later, so never is

Connection errors, timeouts, 5xx, 408 and 429 stay what they were: retried for as long as it
takes. Lines quote the service's error code and its first line, never a secret.
"""

import socket
from urllib.parse import urlsplit

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from nfs_watcher_uploader.config import Settings

# The credentials that stay the same while the process runs (storage._Candidate labels).
FIXED_CREDENTIALS = frozenset({"sas", "connection-string", "account-key"})
_CONTAINER_CODES = frozenset({"InvalidResourceName", "OutOfRangeInput"})
_WHAT_TO_CHECK = {
    "sas": "APP_AZURE_SAS_TOKEN (its signature, expiry, start time and permissions)",
    "connection-string": "the AccountKey or SharedAccessSignature in APP_AZURE_CONNECTION_STRING",
    "account-key": "APP_AZURE_ACCOUNT_KEY and APP_AZURE_ACCOUNT_NAME",
}


def error_code(exc: BaseException) -> str | None:
    """The service's error code as a plain string (the SDK gives a str Enum, which hashes by
    member name, so it would never match a set of strings)."""
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))


def stop_line(exc: BaseException, settings: Settings) -> str | None:
    """The line that ends start-up when `exc` (not a refusal of the credential) can never
    heal; None when it may (retry)."""
    code = error_code(exc)
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
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


def refused_for_good(exc: BaseException, label: str) -> bool:
    """Storage refused credential `label` (401/403) and will refuse it the same way until the
    process is restarted with another."""
    if label not in FIXED_CREDENTIALS:
        return False
    return isinstance(exc, HttpResponseError) and exc.status_code in (401, 403)


def every_credential_refused(failures: list[str], labels: list[str]) -> str:
    """The line that ends start-up when each credential in `labels` was refused for good."""
    check = "; ".join(_WHAT_TO_CHECK[label] for label in dict.fromkeys(labels))
    return (
        "storage refuses every credential for good ("
        + "; ".join(failures)
        + f"): check {check}, and the storage account's network rules"
    )


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
