"""The credential chain: which credentials to try, in order, and the first that reaches the
container.

APP_AZURE_AUTH=auto: a token credential only for an https:// account URL, since the SDK refuses
token credentials over http (workload identity, then managed identity; or DefaultAzureCredential
with `identity-default`); then a SAS, the connection string, the account key. A candidate that
fails authentication (or that storage refuses: 401, 403) hands over to the next. `identity`,
`identity-default`, `sas`, `connection-string` and `account-key` use exactly one.

With APP_AZURE_CREATE_CONTAINER=false start-up neither creates nor reads the container: it asks
for one blob that does not exist, and "not found" or "not allowed to read" both prove the
credential (a `cw` SAS may not read). The same question, asked after the container check
otherwise, tells whether the credential may read blobs (`Connection.may_read`).

An answer that no retry can change (`azure_errors`: a 400, an account that does not exist, every
fixed credential refused for good) raises CannotStart; anything else, RetryableError (a SAS not
valid yet, or the account's network rules, are waited for).
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from nfs_watcher_uploader.blob.azure_errors import (
    error_code,
    every_credential_refused,
    not_permitted,
    refused,
    refused_for_good,
    stop_line,
    summary,
)
from nfs_watcher_uploader.config import AzureAuth, Settings
from nfs_watcher_uploader.errors import CannotStart, RetryableError
from nfs_watcher_uploader.settings_checks import connection_string_fields

logger = logging.getLogger(__name__)

STORAGE_SCOPE = "https://storage.azure.com/.default"
# Asked for at start-up with APP_AZURE_CREATE_CONTAINER=false: blob names all start with a
# date, so no blob has this one.
PROBE_BLOB = "nfs-watcher-uploader-credential-check"

TokenCredentialFactory = Callable[[], AsyncTokenCredential]


class Closeable(Protocol):
    async def close(self) -> None: ...


def workload_or_managed_identity() -> AsyncTokenCredential:
    """Workload identity (when its webhook put AZURE_FEDERATED_TOKEN_FILE in the pod), then
    managed identity: what a pod can have, and nothing that probes developer tools."""
    from azure.identity import aio

    return _identity_chain(aio)


def sync_workload_or_managed_identity() -> Any:
    """The same chain with azure-identity's synchronous credentials (for control requests,
    which run in threads of their own: replicas/control)."""
    import azure.identity

    return _identity_chain(azure.identity)


def _identity_chain(module: Any) -> Any:
    chain: list[Any] = []
    if os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        chain.append(module.WorkloadIdentityCredential())
    chain.append(module.ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID")))
    return module.ChainedTokenCredential(*chain)


def developer_identity() -> AsyncTokenCredential:
    """DefaultAzureCredential (APP_AZURE_AUTH=identity-default): also the Azure CLI and other
    developer sign-ins, for a laptop."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


def account_name_from_url(url: str) -> str | None:
    """`https://acct.blob.core.windows.net` -> acct; `http://127.0.0.1:10000/acct` -> acct."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    first = parts.path.strip("/").split("/", 1)[0]
    return first or None


@dataclass
class _Candidate:
    label: str
    make: Callable[[], tuple[BlobServiceClient, Closeable | None]]
    # When the credential becomes valid (a SAS's start time), if it says.
    valid_from: float | None = None


def sas_valid_from(token: str) -> float | None:
    """The start time (`st`) of a SAS token, in seconds since the epoch; None when it has none
    or it cannot be read."""
    start = parse_qs(token.strip().lstrip("?")).get("st")
    if not start:
        return None
    text = start[0].strip()
    try:
        when = datetime.fromisoformat(text if "T" in text else f"{text}T00:00:00Z")
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True, slots=True)
class Connection:
    """A client that reached the container, with the credential it was made with."""

    label: str
    client: BlobServiceClient
    credential: Closeable | None
    container: ContainerClient
    # False when storage refused this credential a read (a `cw` SAS).
    may_read: bool

    async def close(self) -> None:
        await close_client(self.client, self.credential)


def candidates(
    settings: Settings, token_credential: TokenCredentialFactory, kwargs: dict[str, Any]
) -> list[_Candidate]:
    """The credentials to try, in order (see the module docstring); none is made yet."""
    s = settings
    url = s.azure_account_url
    out: list[_Candidate] = []
    mode = s.azure_auth
    identities = (AzureAuth.IDENTITY, AzureAuth.IDENTITY_DEFAULT)
    if mode in identities or (mode is AzureAuth.AUTO and url.startswith("https://")):

        def identity() -> tuple[BlobServiceClient, Closeable | None]:
            cred = token_credential()
            return BlobServiceClient(url, credential=cred, **kwargs), cred

        label = mode if mode in identities else AzureAuth.IDENTITY
        out.append(_Candidate(label, identity))
    sas = s.azure_sas_token
    if sas and mode in (AzureAuth.AUTO, AzureAuth.SAS):
        token = sas.get_secret_value().strip().lstrip("?")
        signature = AzureSasCredential(token)
        out.append(
            _Candidate(
                "sas",
                lambda: (BlobServiceClient(url, signature, **kwargs), None),
                sas_valid_from(token),
            )
        )
    conn = s.azure_connection_string
    if conn and mode in (AzureAuth.AUTO, AzureAuth.CONNECTION_STRING):
        secret = conn.get_secret_value()
        in_string = connection_string_fields(secret).get("sharedaccesssignature")
        out.append(
            _Candidate(
                "connection-string",
                lambda: (BlobServiceClient.from_connection_string(secret, **kwargs), None),
                sas_valid_from(in_string) if in_string else None,
            )
        )
    key = s.azure_account_key
    name = s.azure_account_name or account_name_from_url(url)
    if key and name and mode in (AzureAuth.AUTO, AzureAuth.ACCOUNT_KEY):
        cred = {"account_name": name, "account_key": key.get_secret_value()}
        out.append(
            _Candidate("account-key", lambda: (BlobServiceClient(url, cred, **kwargs), None))
        )
    return out


async def connect(
    settings: Settings,
    token_credential: TokenCredentialFactory,
    client_kwargs: dict[str, Any],
    create: bool,
) -> Connection:
    """Try each credential until one reaches the container (creating it when `create` and
    APP_AZURE_CREATE_CONTAINER allow). Raises RetryableError when none does yet, CannotStart
    when none ever can."""
    failures: list[str] = []
    # Credentials refused for good; start-up stops when every candidate is among them.
    for_good: list[str] = []
    chain = candidates(settings, token_credential, client_kwargs)
    if not chain:
        raise CannotStart(
            "no Azure credential configured: set APP_AZURE_CONNECTION_STRING, "
            "APP_AZURE_ACCOUNT_KEY, or use an https:// account URL with a managed identity"
        )
    for candidate in chain:
        try:
            client, credential = candidate.make()
        except ValueError as exc:  # e.g. a malformed connection string
            failures.append(f"{candidate.label}: {type(exc).__name__}")
            for_good.append(candidate.label)
            continue
        container = client.get_container_client(settings.azure_container)
        try:
            if isinstance(credential, AsyncTokenCredential):
                # Ask for a token first: the SDK's retry policy would otherwise retry an
                # unavailable identity for a minute or more before we could fall back.
                await credential.get_token(STORAGE_SCOPE)
            if create and settings.azure_create_container:
                await _ensure_container(container)
            may_read = await _prove(container, settings.azure_container)
        except (ClientAuthenticationError, HttpResponseError) as exc:
            if not refused(exc):
                await close_client(client, credential)
                raise _not_refused(exc, candidate.label, settings) from None
            why = f"{summary(exc)}{_hint(exc)}"
            failures.append(f"{candidate.label}: {why}")
            if refused_for_good(exc, candidate.label, candidate.valid_from):
                for_good.append(candidate.label)
            logger.warning("Storage refused the %s credentials: %s", candidate.label, why)
            await close_client(client, credential)
            continue
        except BaseException as exc:
            await close_client(client, credential)
            if isinstance(exc, Exception):
                raise _not_refused(exc, candidate.label, settings) from None
            raise
        return Connection(candidate.label, client, credential, container, may_read)
    if len(for_good) == len(chain):
        raise CannotStart(every_credential_refused(failures, for_good))
    raise RetryableError("no credential could authenticate: " + "; ".join(failures))


def _not_refused(exc: Exception, label: str, settings: Settings) -> CannotStart | RetryableError:
    """What a failure other than a refused credential means: stop, or try again later."""
    if (line := stop_line(exc, settings)) is not None:
        return CannotStart(line)
    return RetryableError(f"{label}: {summary(exc)}")


async def _prove(container: ContainerClient, name: str) -> bool:
    """Show that storage accepts the credential without reading the container, and learn
    whether it may read blobs (returned): ask for a blob that does not exist. Not found, or not
    allowed to read (AuthorizationPermissionMismatch), both mean the signature is good; anything
    else is raised."""
    try:
        await container.get_blob_client(PROBE_BLOB).get_blob_properties()
    except ResourceNotFoundError as exc:
        if error_code(exc) == "ContainerNotFound":
            raise RetryableError(
                f"container {name!r} does not exist, and "
                "APP_AZURE_CREATE_CONTAINER=false: create it, or set it to true"
            ) from None
        if error_code(exc) == "ResourceNotFound":  # the account, not the blob
            raise
    except HttpResponseError as exc:
        if not not_permitted(exc):
            raise
        return False
    return True


def _hint(exc: BaseException) -> str:
    if not_permitted(exc):
        return (
            " (a credential that may not read the container, such as a `cw` SAS, needs "
            "APP_AZURE_CREATE_CONTAINER=false)"
        )
    return ""


async def _ensure_container(container: ContainerClient) -> None:
    try:
        await container.get_container_properties()
    except ResourceNotFoundError:
        try:
            await container.create_container()
        except ResourceExistsError:
            pass


async def close_client(client: BlobServiceClient, credential: Closeable | None) -> None:
    try:
        await client.close()
    finally:
        if credential is not None:
            await credential.close()
