"""Verified uploads to one container: every request carries the MD5 read from NFS, and a name
held by other bytes is never overwritten.

Azure only stores the Content-MD5 of a blob put in blocks, it does not check it. So every
request carries, as its transactional Content-MD5, the MD5 of the bytes read from NFS (per
block, taken while copying; or of the whole file for a single put), and the service refuses any
byte that changed since (400 Md5Mismatch), before the block list is committed. The whole-file
MD5 is stored as the blob's Content-MD5.

Name conflicts need a read (the Content-MD5 of the blob that holds the name). A credential that
may not read (AuthorizationPermissionMismatch) cannot tell "the same bytes, already up" from
"another file's bytes": the name is then treated as held by other bytes, so this file goes up
under the next free name and nothing is ever overwritten (a re-upload after a crash leaves a
duplicate `~2` rather than a gap). Which credential is used is `credentials`' business; what an
error means, `azure_errors`'.
"""

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio.to_thread
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobClient, ContainerClient

from nfs_watcher_uploader.blob import credentials
from nfs_watcher_uploader.blob.azure_errors import (
    NOT_PERMITTED,
    TAKEN_CODES,
    check_blob_name,
    classify,
    error_code,
    not_permitted,
)
from nfs_watcher_uploader.blob.blobinfo import BlobInfo
from nfs_watcher_uploader.blob.blocks import Blocks, check_length, log_mismatch
from nfs_watcher_uploader.blob.early import EarlyBlocks
from nfs_watcher_uploader.blob.rest import BlobHeaders, Rest
from nfs_watcher_uploader.config import AzureAuth, NameConflict, Settings
from nfs_watcher_uploader.constants import (
    MAX_BLOCKS,
    MAX_NAME_VERSIONS,
)
from nfs_watcher_uploader.errors import IntegrityError, PermanentError, RetryableError, UploadError
from nfs_watcher_uploader.nfs.copying import Staged
from nfs_watcher_uploader.nfs.layout import versioned
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import (
    Meter,
    MeteredTransport,
    Wire,
    new_session,
    waiting_counts_as,
)

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
# Files up to this size are staged in memory (at most one per worker at a time).
IN_MEMORY_MAX = 1024 * 1024
DEFAULT_SINGLE_PUT_SIZE = 8 * 1024 * 1024
# The SDK's socket timeouts for every request (connect, then each read).
CONNECTION_TIMEOUT_S = 20
READ_TIMEOUT_S = 120
# The metadata that orders the versions of a blob written again and again (a manifest).
GENERATION = "generation"


class _Missing:
    """No blob has the name."""


class _Unreadable:
    """The credential may not read the blob that has the name."""


_MISSING = _Missing()
_UNREADABLE = _Unreadable()


@dataclass(frozen=True, slots=True)
class _Found:
    """A blob that has the name: its Content-MD5 (None: it has none) and ETag."""

    md5: bytes | None
    etag: str


@dataclass(frozen=True, slots=True)
class Sent:
    """Where a file went: `blob_name`, and whether it was already there with the same bytes.
    `compared` is False when a name it passed over could not be read (so may hold the same
    bytes). `etag`: the blob's ETag after the commit, or as found (None: not known)."""

    blob_name: str
    already: bool = False
    compared: bool = True
    etag: str | None = None


def _generation(metadata: dict[str, str] | None) -> int:
    """The generation a blob's metadata gives (0: none, or not a number of ours)."""
    value = (metadata or {}).get(GENERATION, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 30 else 0


class _NameTaken(Exception):
    """The blob exists: the conditional create did not happen."""


class Storage:
    """One container, reached with the first credential that works."""

    def __init__(
        self,
        settings: Settings,
        token_credential: credentials.TokenCredentialFactory | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._settings = settings
        if token_credential is None:
            developer = settings.azure_auth is AzureAuth.IDENTITY_DEFAULT
            token_credential = (
                credentials.developer_identity
                if developer
                else credentials.workload_or_managed_identity
            )
        self._token_credential = token_credential
        # Every request goes through the meter (the bandwidth cap), on one shared session.
        self.meter = meter or Meter(TokenBucket())
        self._session: aiohttp.ClientSession | None = None
        self._wire: Wire | None = None
        self._rest: Rest | None = None
        self.block_size = settings.azure_max_block_size or DEFAULT_BLOCK_SIZE
        single = settings.azure_max_single_put_size
        self.single_put_size = DEFAULT_SINGLE_PUT_SIZE if single is None else single
        self.in_memory_max = min(IN_MEMORY_MAX, self.single_put_size)
        self.blocks = Blocks(self.block_size, settings.azure_max_concurrency)
        self._connection: credentials.Connection | None = None
        self.auth_used: str | None = None
        # False once storage refused a read with this credential (see the module docstring).
        self.can_read = True

    def __repr__(self) -> str:
        return (
            f"Storage(container={self._settings.azure_container!r} auth={self.auth_used} "
            f"can_read={self.can_read})"
        )

    @property
    def rest(self) -> Rest:
        """The puts (the lean request path) of the connected container."""
        if self._rest is None:
            raise RetryableError("storage is not connected yet")
        return self._rest

    @property
    def container(self) -> ContainerClient:
        if self._connection is None:
            raise RetryableError("storage is not connected yet")
        return self._connection.container

    def _client_kwargs(self) -> dict[str, Any]:
        if self._session is None:
            self._session = new_session()
        self._wire = Wire(self.meter, self._session, CONNECTION_TIMEOUT_S, READ_TIMEOUT_S)
        transport = MeteredTransport(
            self._wire, connection_timeout=CONNECTION_TIMEOUT_S, read_timeout=READ_TIMEOUT_S
        )
        return {
            "transport": transport,
            "max_single_put_size": max(self.single_put_size, 1),
            "max_block_size": self.block_size,
            # The SDK's own retries ride out blips (1 s, then 3 s); longer outages are retried by
            # the pipeline, where they show in /v1/status, instead of inside one call for minutes.
            "retry_total": 2,
            "initial_backoff": 1,
            "increment_base": 2,
            "connection_timeout": CONNECTION_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
        }

    async def connect(self, create: bool = True) -> None:
        """Reach the container with the first credential that works (see `credentials`).

        Raises RetryableError when none does yet: the caller keeps trying, the API keeps serving;
        CannotStart when none ever can (`azure_errors`).
        """
        try:
            kwargs = self._client_kwargs()
            connection = await credentials.connect(
                self._settings, self._token_credential, kwargs, create
            )
        except BaseException:
            await self._close_session()
            raise
        if not connection.may_read:
            self._reads_refused()
        self._connection = connection
        assert self._wire is not None
        self._rest = Rest(connection.client, connection.container, self._wire)
        self.auth_used = connection.label
        logger.info("Connected to storage with %s credentials", connection.label)

    def _reads_refused(self) -> None:
        if self.can_read:
            logger.warning(
                "Storage refuses this credential reads (%s): a blob name already taken cannot "
                "be compared with the file, so the file goes up under the next free name "
                "(name~2) and both are kept; a file uploaded again after a crash leaves a "
                "duplicate",
                NOT_PERMITTED,
            )
        self.can_read = False

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._rest = None
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
        if_match: str | None = None,
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
        is parked (park). `overwrite` (or APP_ON_NAME_CONFLICT=overwrite) replaces the blob:
        this file's own blob, sent again whole after a late write, only if it is still the
        version `if_match` names (the ETag of this file's commit), or else the version just
        looked at; a blob changed since (another member's, or a consumer's) is never replaced
        (PermanentError: the file is parked), and a blob gone since is created again.
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
                return await self._replace(
                    local, blob_name, staged, progress, log_extra, info, if_match
                )
            if policy is NameConflict.OVERWRITE:
                etag = await self._send(local, blob_name, staged, progress, True, log_extra, info)
                return Sent(blob_name, etag=etag)
            compared = True
            for version in range(1, MAX_NAME_VERSIONS + 1):
                name = versioned(blob_name, version)
                check_blob_name(name)
                # A file sent in blocks is looked for first: one request against many.
                look_first = staged.block_md5s and self.can_read
                found = await self._look(name) if look_first else _MISSING
                if found is _MISSING or found is _UNREADABLE:
                    try:
                        etag = await self._send(
                            local, name, staged, progress, False, log_extra, info
                        )
                        return Sent(name, compared=compared, etag=etag)
                    except _NameTaken:
                        found = await self._look(name)
                        if found is _MISSING:
                            why = f"blob {name} came and went; trying again"
                            raise RetryableError(why) from None
                if isinstance(found, _Found) and found.md5 == staged.read.md5:
                    return Sent(name, already=True, compared=compared, etag=found.etag)
                # Held by other bytes, or by bytes this credential may not read: never overwritten.
                compared = compared and found is not _UNREADABLE
                if policy is NameConflict.PARK:
                    held = "bytes it may not read" if found is _UNREADABLE else "other bytes"
                    raise PermanentError(
                        f"a blob named {name} with {held} exists (APP_ON_NAME_CONFLICT=park)"
                    )
            raise PermanentError(f"{MAX_NAME_VERSIONS} blobs named like {blob_name} exist")

    async def _replace(
        self,
        local: Path,
        blob_name: str,
        staged: Staged,
        progress: Callable[[], None],
        log_extra: dict[str, str] | None,
        info: BlobInfo,
        if_match: str | None,
    ) -> Sent:
        """Send the file again over its own blob, never over a version it did not write."""
        found = await self._look(blob_name) if self.can_read else _UNREADABLE
        if isinstance(found, _Found):
            if found.md5 == staged.read.md5:
                return Sent(blob_name, already=True, etag=found.etag)
            if if_match is not None and found.etag != if_match:
                raise _changed(blob_name)
            condition: dict[str, str] = {"If-Match": if_match or found.etag}
        elif found is _MISSING:  # gone since (a consumer removed it): created again, only
            condition = {"If-None-Match": "*"}
        else:  # may not read: the condition alone, when this file's commit is known
            condition = {} if if_match is None else {"If-Match": if_match}
        try:
            etag = await self._send(
                local, blob_name, staged, progress, True, log_extra, info, condition
            )
        except _NameTaken:
            raise _changed(blob_name) from None
        return Sent(blob_name, etag=etag)

    async def look(self, name: str) -> tuple[str, bytes | None] | None:
        """The ETag and Content-MD5 of blob `name`; None when it is not there or may not be
        read. Raises UploadError when storage cannot say."""
        found = await self._look(name)
        return (found.etag, found.md5) if isinstance(found, _Found) else None

    async def put_newer(self, blob_name: str, data: bytes, info: BlobInfo, generation: int) -> bool:
        """Write the small blob `blob_name` (a manifest) unless storage holds a newer generation
        of it (metadata `generation`); False then. The write is conditional on what was seen
        (If-Match its ETag, or If-None-Match: * when there was none), so that a write made in
        between is never overwritten: that raises RetryableError (look again later). A
        credential that may not read sees nothing: its write is unconditional, and the caller
        keeps its own record of the generation written."""
        check_blob_name(blob_name)
        info = replace(info, metadata={**info.metadata, GENERATION: str(generation)})
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        condition: dict[str, str] = {}  # unconditional: see above
        if self.can_read:
            try:
                props = await self.container.get_blob_client(blob_name).get_blob_properties()
            except ResourceNotFoundError:
                condition = {"If-None-Match": "*"}
            except HttpResponseError as exc:
                if not not_permitted(exc):
                    raise classify(exc) from exc
                self._reads_refused()
            except Exception as exc:
                raise classify(exc) from exc
            else:
                if _generation(props.metadata) > generation:
                    return False
                condition = {"If-Match": str(props.etag)}
        try:
            blob = BlobHeaders.of(info, md5, overwrite=True, condition=condition)
            await self.rest.put_blob(blob_name, data, md5, blob)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise RetryableError(f"{blob_name} was written meanwhile; looking again") from exc
        except Exception as exc:
            raise classify(exc) from exc
        return True

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
            held = await self._uncommitted(self.container.get_blob_client(blob_name))
        except UploadError:
            return None
        return self.blocks.early(self.rest, blob_name, progress, held)

    async def _md5_of(self, name: str) -> bytes | _Missing | _Unreadable | None:
        """The Content-MD5 of blob `name` (None if it has none), _MISSING, or _UNREADABLE when
        the credential may not read it."""
        found = await self._look(name)
        return found.md5 if isinstance(found, _Found) else found

    async def _look(self, name: str) -> _Found | _Missing | _Unreadable:
        """The blob that has `name`, _MISSING, or _UNREADABLE when the credential may not read
        it."""
        try:
            props = await self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return _MISSING
        except HttpResponseError as exc:
            if not not_permitted(exc):
                raise classify(exc) from exc
            self._reads_refused()
            return _UNREADABLE
        except Exception as exc:
            raise classify(exc) from exc
        md5 = props.content_settings.content_md5
        return _Found(None if md5 is None else bytes(md5), str(props.etag))

    async def _send(
        self,
        local: Path,
        blob_name: str,
        staged: Staged,
        progress: Callable[[], None],
        overwrite: bool,
        log_extra: dict[str, str] | None,
        info: BlobInfo,
        condition: Mapping[str, str] | None = None,
    ) -> str | None:
        """Send the file, committing it only if no blob has the name (unless `overwrite`:
        then under `condition`, If-Match or If-None-Match headers, when given); returns the
        new ETag (None: storage did not say)."""
        blob = BlobHeaders.of(info, staged.read.md5, overwrite, condition if overwrite else None)
        rest = self.rest
        try:
            if staged.data is not None:
                data = staged.data
            else:
                fd = await anyio.to_thread.run_sync(os.open, local, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if staged.block_md5s:
                        held = await self._uncommitted(self.container.get_blob_client(blob_name))
                        ids = await self.blocks.put(
                            rest, blob_name, fd, staged, held, progress, log_extra
                        )
                        etag = await rest.put_block_list(blob_name, ids, blob)
                        progress()
                        return etag
                    data = await anyio.to_thread.run_sync(os.pread, fd, staged.read.size + 1, 0)
                finally:
                    os.close(fd)
                check_length(len(data), staged, log_extra)
            etag = await rest.put_blob(blob_name, data, staged.read.md5, blob)
        except FileNotFoundError:
            raise RetryableError(f"staged copy of {blob_name} vanished; staging again") from None
        except ResourceExistsError as exc:
            if error_code(exc) in TAKEN_CODES:
                raise _NameTaken from exc
            raise classify(exc) from exc
        except HttpResponseError as exc:
            if exc.status_code == 412 and (not overwrite or condition):
                raise _NameTaken from exc
            raise self._classified(exc, log_extra) from exc
        except Exception as exc:
            raise self._classified(exc, log_extra) from exc
        progress()
        return etag

    @staticmethod
    def _classified(exc: BaseException, log_extra: dict[str, str] | None) -> UploadError:
        error = classify(exc)
        if isinstance(error, IntegrityError) and not isinstance(exc, IntegrityError):
            log_mismatch(str(error), log_extra)
        return error

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
            if not not_permitted(exc):
                raise classify(exc) from exc
            self._reads_refused()
            return {}
        except Exception as exc:
            raise classify(exc) from exc
        return {b.id: b.size for b in uncommitted}


def _changed(blob_name: str) -> PermanentError:
    return PermanentError(
        f"blob {blob_name} changed since this file was committed to it (another writer's "
        "version is there); not overwritten"
    )
