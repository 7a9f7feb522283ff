"""Azure Blob Storage: the credential chain, the container check, and verified uploads.

Credentials (APP_AZURE_AUTH=auto): a token credential only for an https:// account URL, since
the SDK refuses token credentials over http (workload identity, then managed identity; or
DefaultAzureCredential with `identity-default`); then a SAS, the connection string, the account
key. A candidate that fails authentication (or that storage refuses: 401, 403) hands over to the
next. `identity`, `identity-default`, `sas`, `connection-string` and `account-key` use exactly
one. With APP_AZURE_CREATE_CONTAINER=false start-up neither creates nor reads the container: it
asks for one blob that does not exist, and "not found" or "not allowed to read" both prove the
credential (a `cw` SAS may not read). The same question, asked after the container check
otherwise, tells whether the credential may read blobs (`can_read`).

Name conflicts need a read (the Content-MD5 of the blob that holds the name). A credential that
may not read (AuthorizationPermissionMismatch) cannot tell "the same bytes, already up" from
"another file's bytes": the name is then treated as held by other bytes, so this file goes up
under the next free name and nothing is ever overwritten (a re-upload after a crash leaves a
duplicate `~2` rather than a gap).

Uploads: Azure only stores the Content-MD5 of a blob put in blocks, it does not check it. So
every request carries, as its transactional Content-MD5, the MD5 of the bytes read from NFS
(per block, taken while copying; or of the whole file for a single put), and the service
refuses any byte that changed since (400 Md5Mismatch), before the block list is committed.
The whole-file MD5 is stored as the blob's Content-MD5.
"""

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import anyio.to_thread
from azure.core.credentials import AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from nfs_watcher_uploader.bandwidth import TokenBucket
from nfs_watcher_uploader.blobinfo import BlobInfo
from nfs_watcher_uploader.block_ids import block_id
from nfs_watcher_uploader.config import AzureAuth, NameConflict, Settings
from nfs_watcher_uploader.constants import (
    MAX_BLOB_NAME,
    MAX_BLOB_PATH_SEGMENTS,
    MAX_BLOCKS,
    MAX_NAME_VERSIONS,
)
from nfs_watcher_uploader.early import EarlyBlocks
from nfs_watcher_uploader.errors import (
    CannotStart,
    IntegrityError,
    PermanentError,
    RetryableError,
    UploadError,
)
from nfs_watcher_uploader.fsops import Staged
from nfs_watcher_uploader.layout import versioned
from nfs_watcher_uploader.models import printable
from nfs_watcher_uploader.refusals import error_code as _error_code
from nfs_watcher_uploader.refusals import every_credential_refused, refused_for_good, stop_line
from nfs_watcher_uploader.single_put import SinglePut
from nfs_watcher_uploader.wire import (
    Meter,
    MeteredTransport,
    new_session,
    waiting_counts_as,
)

logger = logging.getLogger(__name__)

STORAGE_SCOPE = "https://storage.azure.com/.default"
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
BLOCK_BUDGET_BYTES = 64 * 1024 * 1024
# Files up to this size are staged in memory (at most one per worker at a time).
IN_MEMORY_MAX = 1024 * 1024
DEFAULT_SINGLE_PUT_SIZE = 8 * 1024 * 1024

# 4xx answers that no retry can turn into a success. Everything else (5xx, 408, 429, 401/403
# while a token or key is being rotated, 404 while the container is recreated, network errors,
# timeouts) is retried.
_PERMANENT_CODES = frozenset(
    {"InvalidResourceName", "InvalidUri", "OutOfRangeInput", "InvalidBlobOrBlock", "InvalidInput"}
)
_PERMANENT_STATUS = frozenset({413, 414})
# What Azure answers a create with If-None-Match: * when the name is taken.
_TAKEN_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
# What Azure answers a request the credential is valid for but not allowed to make (a read with
# a `cw` SAS, say).
_NOT_PERMITTED = "AuthorizationPermissionMismatch"
# Asked for at start-up with APP_AZURE_CREATE_CONTAINER=false: blob names all start with a
# date, so no blob has this one.
PROBE_BLOB = "nfs-watcher-uploader-credential-check"


class _Missing:
    """No blob has the name."""


class _Unreadable:
    """The credential may not read the blob that has the name."""


_MISSING = _Missing()
_UNREADABLE = _Unreadable()

TokenCredentialFactory = Callable[[], AsyncTokenCredential]


class _Closeable(Protocol):
    async def close(self) -> None: ...


def workload_or_managed_identity() -> AsyncTokenCredential:
    """Workload identity (when its webhook put AZURE_FEDERATED_TOKEN_FILE in the pod), then
    managed identity: what a pod can have, and nothing that probes developer tools."""
    from azure.identity.aio import (
        ChainedTokenCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    chain: list[AsyncTokenCredential] = []
    if os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        chain.append(WorkloadIdentityCredential())
    chain.append(ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID")))
    return ChainedTokenCredential(*chain)


def developer_identity() -> AsyncTokenCredential:
    """DefaultAzureCredential (APP_AZURE_AUTH=identity-default): also the Azure CLI and other
    developer sign-ins, for a laptop."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


@dataclass
class _Candidate:
    label: str
    make: Callable[[], tuple[BlobServiceClient, _Closeable | None]]


@dataclass(frozen=True, slots=True)
class Sent:
    """Where a file went: `blob_name`, and whether it was already there with the same bytes.
    `compared` is False when a name it passed over could not be read (so may hold the same
    bytes)."""

    blob_name: str
    already: bool = False
    compared: bool = True


class _NameTaken(Exception):
    """The blob exists: the conditional create did not happen."""


def account_name_from_url(url: str) -> str | None:
    """`https://acct.blob.core.windows.net` -> acct; `http://127.0.0.1:10000/acct` -> acct."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    first = parts.path.strip("/").split("/", 1)[0]
    return first or None


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
    summary = _summary(exc)
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = exc.status_code or 0
        code = _error_code(exc)
        # Azure answers Md5Mismatch; Azurite answers InvalidOperation "contentMD5 doesn't match".
        if code == "Md5Mismatch" or (status == 400 and "contentmd5" in str(exc).lower()):
            return IntegrityError(f"storage received bytes that differ from NFS: {summary}")
        if status in _PERMANENT_STATUS or (status == 400 and code in _PERMANENT_CODES):
            return PermanentError(f"storage refused the blob: {summary}")
    return RetryableError(summary)


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    status = getattr(exc, "status_code", None)
    code = _error_code(exc)
    prefix = type(exc).__name__ + (f" {status}" if status else "") + (f" {code}" if code else "")
    return f"{prefix}: {first[:300]}" if first else prefix


class Storage:
    """One container, reached with the first credential that works."""

    def __init__(
        self,
        settings: Settings,
        token_credential: TokenCredentialFactory | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._settings = settings
        if token_credential is None:
            developer = settings.azure_auth is AzureAuth.IDENTITY_DEFAULT
            token_credential = developer_identity if developer else workload_or_managed_identity
        self._token_credential = token_credential
        # Every request goes through the meter (the bandwidth cap), on one shared session.
        self.meter = meter or Meter(TokenBucket())
        self._session: aiohttp.ClientSession | None = None
        self._transport: MeteredTransport | None = None
        self._single: SinglePut | None = None
        self.block_size = settings.azure_max_block_size or DEFAULT_BLOCK_SIZE
        single = settings.azure_max_single_put_size
        self.single_put_size = DEFAULT_SINGLE_PUT_SIZE if single is None else single
        self.concurrency = settings.azure_max_concurrency
        self.in_memory_max = min(IN_MEMORY_MAX, self.single_put_size)
        # Bytes of blocks in memory at once, across all uploads: keeps RSS bounded whatever
        # the number of workers times the per-file concurrency.
        self._budget = asyncio.Semaphore(max(2, BLOCK_BUDGET_BYTES // self.block_size))
        self._client: BlobServiceClient | None = None
        self._credential: _Closeable | None = None
        self._container: ContainerClient | None = None
        self.auth_used: str | None = None
        # False once storage refused a read with this credential (see the module docstring).
        self.can_read = True
        # Keys block ids (see `block_id`). The service sets the one kept on NFS, so that blocks
        # staged before a restart are recognised after it; until then, one of this process.
        self.block_key = os.urandom(32)

    def __repr__(self) -> str:
        return (
            f"Storage(container={self._settings.azure_container!r} auth={self.auth_used} "
            f"can_read={self.can_read})"
        )

    @property
    def connected(self) -> bool:
        return self._container is not None

    @property
    def single(self) -> SinglePut:
        if self._single is None:
            raise RetryableError("storage is not connected yet")
        return self._single

    @property
    def container(self) -> ContainerClient:
        if self._container is None:
            raise RetryableError("storage is not connected yet")
        return self._container

    def _client_kwargs(self) -> dict[str, Any]:
        if self._session is None:
            self._session = new_session()
        self._transport = MeteredTransport(
            self.meter,
            session=self._session,
            session_owner=False,
            connection_timeout=20,
            read_timeout=120,
        )
        return {
            "transport": self._transport,
            "max_single_put_size": max(self.single_put_size, 1),
            "max_block_size": self.block_size,
            # The SDK's own retries ride out blips (1 s, then 3 s); longer outages are retried by
            # the pipeline, where they show in /v1/status, instead of inside one call for minutes.
            "retry_total": 2,
            "initial_backoff": 1,
            "increment_base": 2,
            "connection_timeout": 20,
            "read_timeout": 120,
        }

    def _candidates(self) -> list[_Candidate]:
        s = self._settings
        url = s.azure_account_url
        kwargs = self._client_kwargs()
        out: list[_Candidate] = []
        mode = s.azure_auth
        identities = (AzureAuth.IDENTITY, AzureAuth.IDENTITY_DEFAULT)
        if mode in identities or (mode is AzureAuth.AUTO and url.startswith("https://")):

            def identity() -> tuple[BlobServiceClient, _Closeable | None]:
                cred = self._token_credential()
                return BlobServiceClient(url, credential=cred, **kwargs), cred

            label = mode if mode in identities else AzureAuth.IDENTITY
            out.append(_Candidate(label, identity))
        sas = s.azure_sas_token
        if sas and mode in (AzureAuth.AUTO, AzureAuth.SAS):
            signature = AzureSasCredential(sas.get_secret_value().strip().lstrip("?"))
            out.append(
                _Candidate("sas", lambda: (BlobServiceClient(url, signature, **kwargs), None))
            )
        conn = s.azure_connection_string
        if conn and mode in (AzureAuth.AUTO, AzureAuth.CONNECTION_STRING):
            secret = conn.get_secret_value()
            out.append(
                _Candidate(
                    "connection-string",
                    lambda: (BlobServiceClient.from_connection_string(secret, **kwargs), None),
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

    async def connect(self, create: bool = True) -> None:
        """Try each credential until one reaches the container (creating it when `create` and
        APP_AZURE_CREATE_CONTAINER allow).

        Raises RetryableError when none does yet: the caller keeps trying, the API keeps serving;
        CannotStart when none ever can (refusals.py).
        """
        try:
            await self._connect(create)
        except BaseException:
            await self._close_session()
            raise

    async def _connect(self, create: bool) -> None:
        failures: list[str] = []
        # Credentials refused for good; start-up stops when every candidate is among them.
        for_good: list[str] = []
        candidates = self._candidates()
        if not candidates:
            raise CannotStart(
                "no Azure credential configured: set APP_AZURE_CONNECTION_STRING, "
                "APP_AZURE_ACCOUNT_KEY, or use an https:// account URL with a managed identity"
            )
        for candidate in candidates:
            try:
                client, credential = candidate.make()
            except ValueError as exc:  # e.g. a malformed connection string
                failures.append(f"{candidate.label}: {type(exc).__name__}")
                for_good.append(candidate.label)
                continue
            container = client.get_container_client(self._settings.azure_container)
            try:
                if isinstance(credential, AsyncTokenCredential):
                    # Ask for a token first: the SDK's retry policy would otherwise retry an
                    # unavailable identity for a minute or more before we could fall back.
                    await credential.get_token(STORAGE_SCOPE)
                if create and self._settings.azure_create_container:
                    await _ensure_container(container)
                await self._prove(container)
            except (ClientAuthenticationError, HttpResponseError) as exc:
                if not _refused(exc):
                    await _close(client, credential)
                    raise _not_refused(exc, candidate.label, self._settings) from None
                why = f"{_summary(exc)}{_hint(exc)}"
                failures.append(f"{candidate.label}: {why}")
                if refused_for_good(exc, candidate.label):
                    for_good.append(candidate.label)
                logger.warning("Storage refused the %s credentials: %s", candidate.label, why)
                await _close(client, credential)
                continue
            except BaseException as exc:
                await _close(client, credential)
                if isinstance(exc, Exception):
                    raise _not_refused(exc, candidate.label, self._settings) from None
                raise
            self._client, self._credential, self._container = client, credential, container
            assert self._transport is not None
            self._single = SinglePut(client, container, self._transport)
            self.auth_used = candidate.label
            logger.info("Connected to storage with %s credentials", candidate.label)
            return
        if len(for_good) == len(candidates):
            raise CannotStart(every_credential_refused(failures, for_good))
        raise RetryableError("no credential could authenticate: " + "; ".join(failures))

    async def _prove(self, container: ContainerClient) -> None:
        """Show that storage accepts the credential without reading the container, and learn
        whether it may read blobs: ask for a blob that does not exist. Not found, or not allowed
        to read (AuthorizationPermissionMismatch), both mean the signature is good; anything
        else is raised."""
        try:
            await container.get_blob_client(PROBE_BLOB).get_blob_properties()
        except ResourceNotFoundError as exc:
            if _error_code(exc) == "ContainerNotFound":
                raise RetryableError(
                    f"container {self._settings.azure_container!r} does not exist, and "
                    "APP_AZURE_CREATE_CONTAINER=false: create it, or set it to true"
                ) from None
            if _error_code(exc) == "ResourceNotFound":  # the account, not the blob
                raise
        except HttpResponseError as exc:
            if _error_code(exc) != _NOT_PERMITTED:
                raise
            self._reads_refused()

    def _reads_refused(self) -> None:
        if self.can_read:
            logger.warning(
                "Storage refuses this credential reads (%s): a blob name already taken cannot "
                "be compared with the file, so the file goes up under the next free name "
                "(name~2) and both are kept; a file uploaded again after a crash leaves a "
                "duplicate",
                _NOT_PERMITTED,
            )
        self.can_read = False

    async def close(self) -> None:
        if self._client is not None:
            await _close(self._client, self._credential)
        self._client = self._credential = self._container = self._single = None
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def upload(
        self,
        local: Path,
        blob_name: str,
        staged: Staged,
        progress: Callable[[], None],
        overwrite: bool = False,
        log_extra: dict[str, str] | None = None,
        info: BlobInfo | None = None,
    ) -> Sent:
        """Upload `local` as a block blob named `blob_name`, or the next free version of that
        name; raise UploadError (see errors.py).

        Every request carries the MD5 taken while reading NFS (per block, or of the whole file
        for a single put) as its transactional Content-MD5, so Azure refuses any byte that
        changed on the way (400 Md5Mismatch, raised here as IntegrityError).

        The blob is created only if no blob has its name (If-None-Match: *). When one has, its
        Content-MD5 decides: the same bytes mean the file is already up (a re-upload after a
        crash: nothing is sent, `Sent.already`); other bytes mean another file had the name,
        and this one goes up as `<stem>~2<ext>`, `~3`... (APP_ON_NAME_CONFLICT=keep-both), or
        is parked (park). `overwrite` (or APP_ON_NAME_CONFLICT=overwrite) replaces the blob.
        A blob the credential may not read counts as other bytes (`Sent.compared` False).
        `info` is the Content-Type, metadata, tags and tier it is created with. Waiting for
        bandwidth counts as `progress` (wire.WAITING).
        """
        with waiting_counts_as(progress):
            check_blob_name(blob_name)
            info = info or BlobInfo()
            if staged.block_md5s and staged.read.size > MAX_BLOCKS * staged.block_size:
                raise PermanentError(
                    f"file is {staged.read.size} bytes; a block blob holds at most "
                    f"{MAX_BLOCKS} blocks of {staged.block_size} bytes"
                )
            policy = self._settings.on_name_conflict
            if overwrite:  # this file's own blob: replaced unless it holds these bytes already
                if self.can_read and await self._md5_of(blob_name) == staged.read.md5:
                    return Sent(blob_name, already=True)
                await self._send(local, blob_name, staged, progress, True, log_extra, info)
                return Sent(blob_name)
            if policy is NameConflict.OVERWRITE:
                await self._send(local, blob_name, staged, progress, True, log_extra, info)
                return Sent(blob_name)
            compared = True
            for version in range(1, MAX_NAME_VERSIONS + 1):
                name = versioned(blob_name, version)
                check_blob_name(name)
                # A file sent in blocks is looked for first: one request against many.
                look_first = staged.block_md5s and self.can_read
                found = await self._md5_of(name) if look_first else _MISSING
                if found is _MISSING or found is _UNREADABLE:
                    try:
                        await self._send(local, name, staged, progress, False, log_extra, info)
                        return Sent(name, compared=compared)
                    except _NameTaken:
                        found = await self._md5_of(name)
                        if found is _MISSING:
                            why = f"blob {name} came and went; trying again"
                            raise RetryableError(why) from None
                if found == staged.read.md5:
                    return Sent(name, already=True, compared=compared)
                # Held by other bytes, or by bytes this credential may not read: never overwritten.
                compared = compared and found is not _UNREADABLE
                if policy is NameConflict.PARK:
                    held = "bytes it may not read" if found is _UNREADABLE else "other bytes"
                    raise PermanentError(
                        f"a blob named {name} with {held} exists (APP_ON_NAME_CONFLICT=park)"
                    )
            raise PermanentError(f"{MAX_NAME_VERSIONS} blobs named like {blob_name} exist")

    async def early_blocks(
        self, blob_name: str, overwrite: bool, progress: Callable[[], None]
    ) -> EarlyBlocks | None:
        """Where the blocks of a large file may go while it is still being read: its own name,
        when no blob has it yet (or it is to be overwritten). None when another blob has the
        name (the upload then decides where the file goes), the credential may not read it,
        or storage cannot say now."""
        try:
            check_blob_name(blob_name)
            if not (overwrite or self._settings.on_name_conflict is NameConflict.OVERWRITE):
                if await self._md5_of(blob_name) is not _MISSING:
                    return None
            blob = self.container.get_blob_client(blob_name)
            held = await self._uncommitted(blob)
        except UploadError:
            return None
        ids = partial(block_id, self.block_key)
        return EarlyBlocks(blob, ids, self._budget, self.concurrency, progress, held)

    async def _md5_of(self, name: str) -> bytes | _Missing | _Unreadable | None:
        """The Content-MD5 of blob `name` (None if it has none), _MISSING, or _UNREADABLE when
        the credential may not read it."""
        try:
            props = await self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return _MISSING
        except HttpResponseError as exc:
            if _error_code(exc) != _NOT_PERMITTED:
                raise classify(exc) from exc
            self._reads_refused()
            return _UNREADABLE
        except Exception as exc:
            raise classify(exc) from exc
        md5 = props.content_settings.content_md5
        return None if md5 is None else bytes(md5)

    async def _send(
        self,
        local: Path,
        blob_name: str,
        staged: Staged,
        progress: Callable[[], None],
        overwrite: bool,
        log_extra: dict[str, str] | None,
        info: BlobInfo,
    ) -> None:
        settings = ContentSettings(
            content_type=info.content_type, content_md5=bytearray(staged.read.md5)
        )
        extra = info.upload_kwargs()
        commit: dict[str, Any] = extra if overwrite else {"if_none_match": "*", **extra}
        try:
            if staged.data is not None:
                data = staged.data
            else:
                fd = await anyio.to_thread.run_sync(os.open, local, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if staged.block_md5s:
                        blob = self.container.get_blob_client(blob_name)
                        ids = await self._put_blocks(blob, fd, staged, progress, log_extra)
                        await blob.commit_block_list(ids, content_settings=settings, **commit)  # pyright: ignore[reportArgumentType]
                        progress()
                        return
                    data = await anyio.to_thread.run_sync(os.pread, fd, staged.read.size + 1, 0)
                finally:
                    os.close(fd)
                _check_length(len(data), staged, log_extra)
            await self.single.put(blob_name, data, staged.read.md5, overwrite, info)
        except FileNotFoundError:
            raise RetryableError(f"staged copy of {blob_name} vanished; staging again") from None
        except ResourceExistsError as exc:
            if _error_code(exc) in _TAKEN_CODES:
                raise _NameTaken from exc
            raise classify(exc) from exc
        except HttpResponseError as exc:
            if exc.status_code == 412 and not overwrite:
                raise _NameTaken from exc
            raise self._classified(exc, log_extra) from exc
        except Exception as exc:
            raise self._classified(exc, log_extra) from exc
        progress()

    @staticmethod
    def _classified(exc: BaseException, log_extra: dict[str, str] | None) -> UploadError:
        error = classify(exc)
        if isinstance(error, IntegrityError) and not isinstance(exc, IntegrityError):
            _log_mismatch(str(error), log_extra)
        return error

    async def _put_blocks(
        self,
        blob: BlobClient,
        fd: int,
        staged: Staged,
        progress: Callable[[], None],
        log_extra: dict[str, str] | None,
    ) -> list[str]:
        """Stage every block Azure does not hold yet, at most `concurrency` at once for this
        file and the block budget across all files. Each block is read only once its budget
        permit is held, and the permit is released by `async with` on every path (failure,
        cancellation).

        A block's id is its index and MD5, so an uncommitted block of this blob with the same
        id and size holds the same bytes (Azure checked its MD5 when it was staged): after a
        retry or a restart, those are not sent again. Two uploads that stage blocks on one blob
        name at once (both found the name free) never mix their blocks in a commit."""
        count = len(staged.block_md5s)
        ids = [block_id(self.block_key, i, md5) for i, md5 in enumerate(staged.block_md5s)]
        held = await self._uncommitted(blob)
        window = asyncio.Semaphore(self.concurrency)
        resumed = 0

        async def put(index: int) -> None:
            nonlocal resumed
            offset = index * staged.block_size
            length = min(staged.block_size, staged.read.size - offset)
            if held.get(ids[index]) == length:
                resumed += 1
                return
            async with self._budget:
                data = await anyio.to_thread.run_sync(os.pread, fd, length, offset)
                if len(data) != length:  # the staged copy is shorter than what was read
                    _check_length(offset + len(data), staged, log_extra)
                await blob.stage_block(
                    ids[index], data, transactional_content_md5=staged.block_md5s[index]
                )
            progress()

        async with asyncio.TaskGroup() as tg:
            for index in range(count):
                await window.acquire()
                tg.create_task(put(index)).add_done_callback(lambda _: window.release())
        longer = await anyio.to_thread.run_sync(os.pread, fd, 1, staged.read.size)
        _check_length(staged.read.size + len(longer), staged, log_extra)
        _log_blocks_found(blob.blob_name, ids, held, staged, resumed, log_extra)
        return ids

    async def _uncommitted(self, blob: BlobClient) -> dict[str, int]:
        """The blob's uncommitted blocks: id -> size (none when the blob does not exist, or
        the credential may not read: then every block is sent)."""
        if not self.can_read:
            return {}
        try:
            _, uncommitted = await blob.get_block_list("uncommitted")
        except ResourceNotFoundError:
            return {}
        except HttpResponseError as exc:
            if _error_code(exc) != _NOT_PERMITTED:
                raise classify(exc) from exc
            self._reads_refused()
            return {}
        except Exception as exc:
            raise classify(exc) from exc
        return {b.id: b.size for b in uncommitted}

    @property
    def budget_free(self) -> int:
        """Block permits not held right now (all of them when no upload is running)."""
        return self._budget._value  # pyright: ignore[reportPrivateUsage]


def _log_blocks_found(
    name: str,
    ids: list[str],
    held: dict[str, int],
    staged: Staged,
    resumed: int,
    log_extra: dict[str, str] | None,
) -> None:
    """Say where the blocks found in storage came from: sent by this upload while the file was
    read (the usual way of a large file), or left by an earlier attempt (a resume)."""
    if not resumed:
        return
    early = sum(1 for i in staged.sent_early.intersection(ids) if i in held)
    earlier = resumed - early
    blob = printable(name)
    if earlier:
        logger.info(
            "%s: resumed: %d of %d blocks were in storage from an earlier attempt, not sent "
            "again%s",
            blob,
            earlier,
            len(ids),
            f"; {early} sent while the file was read" if early else "",
            extra=log_extra,
        )
    else:
        logger.info(
            "%s: %d of %d blocks sent while the file was read, the rest now",
            blob,
            early,
            len(ids),
            extra=log_extra,
        )


def _log_mismatch(reason: str, log_extra: dict[str, str] | None) -> None:
    logger.error("INTEGRITY MISMATCH: %s; not committing", reason, extra=log_extra)


def _check_length(sent: int, staged: Staged, log_extra: dict[str, str] | None) -> None:
    if sent != staged.read.size:
        reason = f"staged copy has {sent} bytes, {staged.read.size} were read from NFS"
        _log_mismatch(reason, log_extra)
        raise IntegrityError(reason)


def _refused(exc: BaseException) -> bool:
    """Storage (or the identity) refused this credential: the next one may do."""
    return isinstance(exc, ClientAuthenticationError) or (
        isinstance(exc, HttpResponseError) and exc.status_code in (401, 403)
    )


def _not_refused(exc: Exception, label: str, settings: Settings) -> CannotStart | RetryableError:
    """What a failure other than a refused credential means: stop, or try again later."""
    if (line := stop_line(exc, settings)) is not None:
        return CannotStart(line)
    return RetryableError(f"{label}: {_summary(exc)}")


def _hint(exc: BaseException) -> str:
    if _error_code(exc) == _NOT_PERMITTED:
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


async def _close(client: BlobServiceClient, credential: _Closeable | None) -> None:
    try:
        await client.close()
    finally:
        if credential is not None:
            await credential.close()
