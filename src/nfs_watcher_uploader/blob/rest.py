"""The lean request path: Put Blob, Put Block and Put Block List, each one request on the shared
session (`wire.Wire`: metered, through the host's proxy), decided by the connected client's own
retry policy and credential, and nothing else.

The SDK's request pipeline (a dozen policies around each request, and a Shared Key policy that
sorts the `x-ms-*` headers with a pure-Python comparator on every request) cost a small file
more CPU than everything else its upload does (BENCHMARKS.md). What goes out is what the SDK
sends for `upload_blob`, `stage_block` and `commit_block_list` with the same arguments, header
for header (tests/blob/test_rest.py captures both on the wire and compares them):

    every request   x-ms-version, Accept: application/xml, the SDK's User-Agent; per attempt a
                    new x-ms-date and x-ms-client-request-id (uuid1), then the credential
    Put Blob        x-ms-blob-type: BlockBlob, Content-Type: application/octet-stream,
                    Content-MD5: the MD5 of the bytes read from NFS (Azure refuses other bytes)
    Put Block       ?comp=block&blockid=<the id in base64>, Content-MD5 of the block
    Put Block List  ?comp=blocklist, Content-Type: application/xml, the ids in XML
    the blob's      x-ms-blob-content-type, x-ms-blob-content-md5 (the whole file's MD5),
                    x-ms-meta-*, x-ms-tags, x-ms-access-tier, If-None-Match: * unless it
                    overwrites (an overwrite may carry its own condition: If-Match: <ETag>
                    of the version it replaces, or If-None-Match: *); on Put Blob and Put
                    Block List, built once per file (`BlobHeaders`)

Credentials are the connected client's: a Shared Key signs each attempt (`signing`, the same
string the SDK signs); a SAS goes into the query (an AzureSasCredential is read per request, as
the SDK does, or a connection string's SAS kept in the container URL); a token credential's
bearer token comes from the SDK's AsyncStorageBearerTokenCredentialPolicy, with its caching,
refresh and challenge handling. Retries: the client's own retry policy object is asked, after a
failed attempt only, whether and when to try again (which answers and errors, how many times,
the backoff). Errors are raised as the SDK raises them, the same exception types with
`status_code` and `error_code`, so `azure_errors` classifies them alike.
"""

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote
from wsgiref.handlers import format_date_time

from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
)
from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
from azure.storage.blob._serialize import (  # pyright: ignore[reportPrivateUsage]
    serialize_blob_tags_header,
)
from azure.storage.blob._shared.authentication import (  # pyright: ignore[reportPrivateUsage]
    AzureSigningError,
    SharedKeyCredentialPolicy,
)
from azure.storage.blob._shared.models import (  # pyright: ignore[reportPrivateUsage]
    LocationMode,
)
from azure.storage.blob._shared.policies import (  # pyright: ignore[reportPrivateUsage]
    is_retry as sdk_is_retry,  # pyright: ignore[reportUnknownVariableType]
)
from azure.storage.blob._shared.policies_async import (  # pyright: ignore[reportPrivateUsage]
    AsyncStorageBearerTokenCredentialPolicy,
)
from azure.storage.blob._shared.response_handlers import (  # pyright: ignore[reportPrivateUsage]
    process_storage_error,  # pyright: ignore[reportUnknownVariableType]
)
from azure.storage.blob._upload_helpers import (  # pyright: ignore[reportPrivateUsage]
    _convert_mod_error,  # pyright: ignore[reportPrivateUsage, reportUnknownVariableType]
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from uuid_utils import uuid1
from yarl import URL

from nfs_watcher_uploader.blob.blobinfo import BlobInfo
from nfs_watcher_uploader.blob.signing import SharedKey
from nfs_watcher_uploader.redaction import redact
from nfs_watcher_uploader.uplink.wire import Answer, Wire

# The exception the SDK's generated operations raise for these answers (any other: an
# HttpResponseError), before `process_storage_error` turns it into the one the caller gets.
_GENERATED_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}
_XML_HEAD = "<?xml version='1.0' encoding='utf-8'?>\n<BlockList>"
# The SDK's storage retry policy's own judgement of an answer (status codes, error codes).
_is_retry = cast(Callable[[Any, Any], bool], sdk_is_retry)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True, slots=True)
class BlobHeaders:
    """The headers a blob is created with (see the module docstring), built once per file."""

    headers: dict[str, str]

    @classmethod
    def of(
        cls,
        info: BlobInfo,
        md5: bytes,
        overwrite: bool,
        condition: Mapping[str, str] | None = None,
    ) -> "BlobHeaders":
        """`condition`: the conditional headers of an overwrite (If-Match, If-None-Match)."""
        headers = {
            "x-ms-blob-content-type": info.content_type,
            "x-ms-blob-content-md5": b64(md5),
        }
        for key, value in info.metadata.items():
            headers[f"x-ms-meta-{key}"] = value
        if info.tags is not None:
            headers["x-ms-tags"] = serialize_blob_tags_header(info.tags) or ""
        if info.tier is not None:
            headers["x-ms-access-tier"] = str(info.tier.value)
        if not overwrite:
            headers["If-None-Match"] = "*"
        elif condition:
            headers.update(condition)
        return cls(headers)


@dataclass(slots=True)
class _Request:
    """One request as the SDK's credential and retry policies see it (they read `method`, `url`,
    `headers` and `body`)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        # Never the URL's SAS query nor the Authorization header (a log line, a traceback).
        return f"_Request({self.method} {redact(self.url)}, {len(self.body)} bytes)"


class _Attempt(Protocol):
    """One attempt: the per-attempt headers and the credential applied, then the wire."""

    async def __call__(self, request: _Request) -> Answer: ...


class Rest:
    """Puts to the blobs of one connected container."""

    def __init__(self, client: BlobServiceClient, container: ContainerClient, wire: Wire) -> None:
        # The connected client's own configuration: whatever credential it was made with.
        config: Any = client._config  # pyright: ignore[reportPrivateUsage]
        self._retry: Any = config.retry_policy
        self._common = {
            "x-ms-version": client.api_version,
            "Accept": "application/xml",
            "User-Agent": config.user_agent_policy.user_agent,
        }
        base, _, query = container.url.partition("?")
        self._base = base.rstrip("/")
        self._origin = str(URL(self._base).origin())
        # A connection string's SAS is part of the container's URL (the client has no
        # credential policy then).
        self._url_sas = query
        self._wire = wire
        policy = cast(Any, client._credential_policy)  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType]
        self._attempt: _Attempt = self._credential(policy)
        self._date = (0, "")
        self.requests = self.retries = 0

    def __repr__(self) -> str:
        return f"Rest({self._base} requests={self.requests} retries={self.retries})"

    def _credential(self, policy: Any) -> _Attempt:
        """How one attempt applies the client's credential, then goes over the wire."""
        if isinstance(policy, SharedKeyCredentialPolicy):
            account: Any = policy
            return _SharedKeyAttempt(SharedKey(account.account_name, account.account_key), self)
        if isinstance(policy, AsyncStorageBearerTokenCredentialPolicy):
            return _BearerAttempt(policy, self)
        credential = getattr(policy, "_credential", None)
        if isinstance(credential, AzureSasCredential):
            return _SasAttempt(credential, self)
        if policy is not None:
            raise TypeError(f"no lean request path for {type(policy).__name__}")
        return _PlainAttempt(self)  # a SAS in the URL (a connection string's), or none

    # --- the three puts -----------------------------------------------------------------------

    async def put_blob(
        self, blob_name: str, data: bytes, md5: bytes, blob: BlobHeaders
    ) -> str | None:
        """Put Blob: `data` as the whole blob, with its MD5 as the transactional Content-MD5.
        Returns the blob's new ETag (None: the answer had none)."""
        headers = {
            **self._common,
            "x-ms-blob-type": "BlockBlob",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Content-MD5": b64(md5),
            **blob.headers,
        }
        try:
            return _etag(await self._send(self._url(blob_name, ""), headers, data))
        except ResourceModifiedError as error:
            if "If-None-Match" in headers:  # as upload_blob says it: the name is taken
                _convert_mod_error(error)
            raise

    async def put_block(self, blob_name: str, block_id: str, data: bytes, md5: bytes) -> None:
        """Put Block: `data` as the uncommitted block `block_id` (sent in base64, as the SDK's
        stage_block does), with its MD5 as the transactional Content-MD5."""
        query = "comp=block&blockid=" + quote(b64(block_id.encode()), safe="")
        headers = {
            **self._common,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Content-MD5": b64(md5),
        }
        await self._send(self._url(blob_name, query), headers, data)

    async def put_block_list(
        self, blob_name: str, block_ids: list[str], blob: BlobHeaders
    ) -> str | None:
        """Put Block List: commit `block_ids` (each the latest block of that id). Returns the
        blob's new ETag (None: the answer had none)."""
        latest = "".join(f"<Latest>{b64(i.encode())}</Latest>" for i in block_ids)
        body = f"{_XML_HEAD}{latest}</BlockList>".encode()
        headers = {
            **self._common,
            "Content-Type": "application/xml",
            "Content-Length": str(len(body)),
            **blob.headers,
        }
        return _etag(await self._send(self._url(blob_name, "comp=blocklist"), headers, body))

    def _url(self, blob_name: str, query: str) -> str:
        """The blob's URL with `query`, then a connection string's SAS, as the SDK orders them."""
        url = f"{self._base}/{quote(blob_name, safe='~/')}"
        query = "&".join(q for q in (query, self._url_sas) if q)
        return f"{url}?{query}" if query else url

    # --- one request, tried as the client's retry policy says ---------------------------------

    async def _send(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        request = _Request("PUT", url, headers, body)
        settings: dict[str, Any] | None = None
        retry = self._retry
        while True:
            self.requests += 1
            answer: Answer | None = None
            error: AzureError | None = None
            try:
                answer = await self._attempt(request)
            except AzureSigningError:
                raise
            except AzureError as exc:
                error = exc
            else:
                if answer.status_code < 300:
                    return answer
                if not _is_retry(PipelineResponse(None, answer, None), LocationMode.PRIMARY):  # pyright: ignore[reportArgumentType]
                    raise _error(answer)
            if settings is None:
                settings = retry.configure_retries(PipelineRequest(request, PipelineContext(None)))  # pyright: ignore[reportArgumentType]
            if not retry.increment(settings, request=request, response=answer, error=error):
                if error is not None:
                    raise error
                assert answer is not None
                raise _error(answer)
            self.retries += 1
            backoff = retry.get_backoff_time(settings)
            if backoff and backoff > 0:
                await asyncio.sleep(backoff)

    def stamp(self, headers: dict[str, str]) -> None:
        """What the SDK's headers policy adds to each attempt: the date and a request id (a
        uuid1 as the SDK makes, from uuid_utils: the standard library's takes 25 us)."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, format_date_time(now))
        headers["x-ms-date"] = self._date[1]
        headers["x-ms-client-request-id"] = str(uuid1())

    async def over_wire(self, request: _Request, url: URL | None = None) -> Answer:
        """Send the attempt as it is (stamped, its credential applied). `url`: the request's
        URL, when already parsed."""
        url = URL(request.url) if url is None else url
        return await self._wire.send(
            request.method, url, self._origin, request.headers, request.body
        )


class _PlainAttempt:
    """No credential to apply: a SAS in the URL (a connection string's)."""

    def __init__(self, rest: Rest) -> None:
        self._rest = rest

    async def __call__(self, request: _Request) -> Answer:
        self._rest.stamp(request.headers)
        return await self._rest.over_wire(request)


class _SharedKeyAttempt:
    """Signs each attempt with the account key, after its date and request id are set: the
    path as aiohttp sends it (yarl's encoding of the URL, which the SDK signs too), and the
    query's parameters as they are in the URL."""

    def __init__(self, key: SharedKey, rest: Rest) -> None:
        self._key, self._rest = key, rest

    async def __call__(self, request: _Request) -> Answer:
        self._rest.stamp(request.headers)
        _, _, query_string = request.url.partition("?")
        query = [(k, v) for k, _, v in (p.partition("=") for p in query_string.split("&") if p)]
        url = URL(request.url)
        request.headers["Authorization"] = self._key.authorization(
            request.method, url.raw_path, query, request.headers
        )
        return await self._rest.over_wire(request, url)


class _SasAttempt:
    """Appends the SAS to the query, as the SDK's AzureSasCredentialPolicy does (read each
    time: a credential updated in place takes effect)."""

    def __init__(self, credential: AzureSasCredential, rest: Rest) -> None:
        self._credential, self._rest = credential, rest

    async def __call__(self, request: _Request) -> Answer:
        signature = self._credential.signature
        if signature.startswith("?"):
            signature = signature[1:]
        url = request.url
        if "?" in url:
            if signature not in url:
                url = url + "&" + signature
        elif url.endswith("?"):
            url = url + signature
        else:
            url = url + "?" + signature
        signed = _Request(request.method, url, request.headers, request.body)
        self._rest.stamp(signed.headers)
        return await self._rest.over_wire(signed)


class _BearerAttempt:
    """The SDK's bearer token policy around each attempt: a token from the client's token
    credential, cached and refreshed by the policy, and a 401 challenge answered as the SDK
    answers it. A policy of its own (the client's is linked into the client's pipeline), over
    the same credential."""

    def __init__(self, policy: AsyncStorageBearerTokenCredentialPolicy, rest: Rest) -> None:
        credential: Any = policy._credential  # pyright: ignore[reportPrivateUsage]
        scopes: tuple[str, ...] = policy._scopes  # pyright: ignore[reportPrivateUsage]
        self._policy: Any = AsyncStorageBearerTokenCredentialPolicy(credential, *scopes)
        self._policy.next = _Next(rest)
        self._rest = rest

    async def __call__(self, request: _Request) -> Answer:
        self._rest.stamp(request.headers)
        context = PipelineContext(None)
        response: Any = await self._policy.send(PipelineRequest(request, context))
        return cast(Answer, response.http_response)


class _Next:
    """What the bearer policy sends through: the wire."""

    def __init__(self, rest: Rest) -> None:
        self._send: Callable[[_Request], Any] = rest.over_wire

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        answer = await self._send(request.http_request)
        return PipelineResponse(request.http_request, answer, request.context)


def _etag(answer: Answer) -> str | None:
    return answer.headers.get("ETag")


def _error(answer: Answer) -> HttpResponseError:
    """The exception the SDK raises for this answer: made the way its generated operations
    make it, then through its own `process_storage_error` (class, message, `error_code`)."""
    kind = _GENERATED_ERRORS.get(answer.status_code, HttpResponseError)
    try:
        process_storage_error(kind(response=answer))  # pyright: ignore[reportArgumentType]
    except HttpResponseError as error:
        return error
    raise AssertionError("process_storage_error returned")
