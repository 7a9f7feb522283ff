"""What goes over the wire to storage: every request takes its bytes from the bandwidth bucket,
and its body leaves as a stream of chunks that each take theirs, so that a cap (or a new cap)
holds within a chunk, also on a block already in flight.

Two kinds of caller send through here, one attempt at a time, on one shared session: the lean
request path's puts (`Wire.send`: blob/rest.py) and the SDK's other requests (lookups, the
container), through `MeteredTransport`. A body is bytes (a block, a small file, a block list);
for one attempt it is sent as a stream of memoryview chunks with the Content-Length its caller
set (one piece when it fits one uncapped chunk). A retry comes through here again, with the
original bytes. Nothing is copied and nothing about the bytes changes: each request still
carries the MD5 that Azure checks.

Progress: every chunk of a request body adds its length to the `Sending` counter of the
upload it works for (`SENDING`, a context variable the transfer sets for the task of a file, so
the early-block tasks it spawns inherit it): one int add per chunk, no lock, no allocation, and
no argument threaded through the SDK. `Meter.payload` (the lean path's and the transport's
bodies: counted whole when they go in one piece) and `Meter.body` (each chunk of a stream, a
body taken whole) are the places bodies are counted.

Commits (Put Blob, Put Block List) pass a gate before their bytes are counted and again after
they have waited for bandwidth, just before they are sent: with APP_COORDINATION=azure a member
whose validity ended meanwhile commits nothing (a commit may wait behind 8 MiB blocks under a
cap for longer than a lease).
A request already on the wire cannot be called back: create-only commits keep that safe.

Proxies: HTTPS_PROXY, HTTP_PROXY and NO_PROXY (and a proxy's credentials in ~/.netrc) apply
to every request to storage, looked up once for each host a request goes to (`env_proxy`; a
connection string may name another host than APP_AZURE_ACCOUNT_URL). The session does not
trust the environment itself: aiohttp would then read them again in a thread for each request,
two thread hops per small file.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from azure.core.exceptions import (
    AzureError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AioHttpTransport
from multidict import CIMultiDictProxy
from yarl import URL

from nfs_watcher_uploader.constants import (
    CAPPED_CHUNK,
    REQUEST_OVERHEAD,
    SEND_RATE_WINDOW_S,
    UNCAPPED_CHUNK,
)
from nfs_watcher_uploader.errors import RetryableError
from nfs_watcher_uploader.rates import RecentRate
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket

_BYTES = (bytes, bytearray, memoryview)

# The progress callback of the upload this task works for (Storage.upload sets it): a request
# waiting its turn for bandwidth touches it, so that /healthz does not take a worker that waits
# for the link for one that hangs.
WAITING: ContextVar[Callable[[], None] | None] = ContextVar("waiting_for_bandwidth", default=None)


class Sending:
    """The body bytes one file's upload has sent so far (subclassed by the work layer's record
    of a file in flight). Written on the event loop only."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


# The upload the current task sends for (None: a request of no file's, e.g. a manifest).
SENDING: ContextVar[Sending | None] = ContextVar("sending_for", default=None)


def already_in_storage(size: int) -> None:
    """`size` bytes of the current file are in storage from an earlier attempt: they count as
    sent (a resumed upload's progress starts where the earlier attempt left off)."""
    counter = SENDING.get()
    if counter is not None:
        counter.sent += size


@contextmanager
def waiting_counts_as(progress: Callable[[], None]) -> Generator[None]:
    """Within this block, a request waiting for bandwidth calls `progress` now and then."""
    token = WAITING.set(progress)
    try:
        yield
    finally:
        WAITING.reset(token)


def is_commit(method: str, url: str, headers: Mapping[str, str]) -> bool:
    """A request that commits a blob: Put Block List, or Put Blob (a blob type, no `comp=`)."""
    if method != "PUT":
        return False
    query = urlsplit(url).query
    if "comp=blocklist" in query:
        return True
    return "comp=" not in query and any(k.lower() == "x-ms-blob-type" for k in headers)


class Meter:
    """The bucket every request takes from, what was sent, and the gate commits pass."""

    def __init__(self, bucket: TokenBucket, commit_gate: Callable[[], bool] | None = None) -> None:
        self.bucket = bucket
        self._sent = RecentRate(SEND_RATE_WINDOW_S)
        self.total_sent = 0
        # False: no commit may leave now (see the module docstring). None: always open.
        self.commit_gate = commit_gate
        self.commits_held = 0

    def __repr__(self) -> str:
        return f"Meter({self.bucket!r} sent={self.total_sent} commits_held={self.commits_held})"

    def check_commit(self, method: str, url: str | URL, headers: Mapping[str, str]) -> None:
        """Raise RetryableError when the request is a commit and the gate is closed (no gate:
        nothing is looked at)."""
        gate = self.commit_gate
        if gate is not None and is_commit(method, str(url), headers) and not gate():
            self.commits_held += 1
            raise RetryableError("not a valid member now: the commit is held back")

    def rate(self) -> float:
        """Bytes per second sent to storage (headers included) over the last few seconds."""
        return self._sent.per_second()

    async def take(self, size: int, priority: float) -> None:
        await self.bucket.take(size, priority, WAITING.get())
        self.count(size)

    def count(self, size: int) -> None:
        """`size` bytes are going out (their tokens taken, or no limit in force)."""
        self._sent.add(size)
        self.total_sent += size

    async def payload(self, head: int, body: bytes, priority: float) -> Any:
        """Take the tokens of a request's line and headers (`head` bytes) and return its body
        as it is to be sent: `body` itself when it goes in one piece (tokens taken, and counted
        for the current file), else a stream of chunks that take theirs as they go."""
        bucket = self.bucket
        if len(body) <= UNCAPPED_CHUNK and bucket.unlimited_now:  # the common case: no wait
            self.count(head + len(body))
            counter = SENDING.get()
            if counter is not None:
                counter.sent += len(body)
            return body
        await self.take(head, priority)
        if len(body) <= UNCAPPED_CHUNK and bucket.rate is None:  # one chunk anyway
            await self.body(len(body), priority)
            return body
        return self.stream(memoryview(body), priority)

    async def body(self, size: int, priority: float) -> None:
        """Take `size` bytes of a request body: the bucket's, then the current file's count
        (the progress hook: see the module docstring)."""
        await self.take(size, priority)
        counter = SENDING.get()
        if counter is not None:
            counter.sent += size

    async def stream(self, body: memoryview, priority: float) -> AsyncIterator[memoryview]:
        """`body` in chunks, each sent once the bucket allows; the chunk size follows the cap
        in force at each chunk."""
        offset = 0
        while offset < len(body):
            size = UNCAPPED_CHUNK if self.bucket.rate is None else CAPPED_CHUNK
            piece = body[offset : offset + size]
            await self.body(len(piece), priority)
            yield piece
            offset += len(piece)


def new_session() -> aiohttp.ClientSession:
    """One session for every storage client, as the SDK would make it (proxies: `env_proxy`)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)


@dataclass(frozen=True, slots=True)
class Proxy:
    url: str
    auth: aiohttp.BasicAuth | None

    def __repr__(self) -> str:  # the URL may name a user; the auth is a secret
        return f"Proxy({URL(self.url).with_user(None)})"


def env_proxy(url: str) -> Proxy | None:
    """The proxy the environment sets for requests to `url` (None: straight), as aiohttp with
    trust_env would find it. Reads ~/.netrc: off the event loop."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None
    return Proxy(str(proxy), auth)


def head_size(method: str, url: str, headers: Mapping[str, str]) -> int:
    """What a request's line and headers take on the wire (about: aiohttp adds a few)."""
    size = len(method) + len(url) + REQUEST_OVERHEAD
    for name, value in headers.items():
        size += len(name) + len(value) + 4
    return size


@dataclass(frozen=True, slots=True)
class Answer:
    """Storage's answer to one attempt, its body read. Also what an error raised for it carries
    as `response` (the SDK's exceptions read `status_code`, `reason` and `text()`)."""

    status_code: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def text(self, encoding: str | None = None) -> str:
        return self.body.decode(encoding or "utf-8", errors="replace")


class Wire:
    """One attempt of one request to storage at a time: metered by `meter`, through the proxy
    the environment sets for its host, with the SDK's socket timeouts; aiohttp's errors are
    raised as the SDK's aiohttp transport raises them (ServiceRequestError and its kin), so a
    retry policy and `azure_errors` judge them the same."""

    def __init__(
        self,
        meter: Meter,
        session: aiohttp.ClientSession,
        connection_timeout: float,
        read_timeout: float,
    ) -> None:
        self.meter = meter
        self.session = session
        self.timeout = aiohttp.ClientTimeout(
            sock_connect=connection_timeout, sock_read=read_timeout
        )
        # scheme://host:port -> its proxy (None: straight).
        self._proxies: dict[str, Proxy | None] = {}

    def __repr__(self) -> str:
        return f"Wire({self.meter!r} proxies={list(self._proxies.values())})"

    async def proxy_for(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if origin not in self._proxies:
            self._proxies[origin] = await asyncio.to_thread(env_proxy, origin)
        return self._proxies[origin]

    async def send(
        self, method: str, url: URL, origin: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        """Send one request to `url` (whose scheme://host:port is `origin`) and read its
        answer. Raises the SDK's ServiceRequestError and kin, never aiohttp's errors."""
        proxy = self._proxies[origin] if origin in self._proxies else await self.proxy_for(origin)
        # The request that asked first is served first (see TokenBucket).
        head = head_size(method, origin, headers) + len(url.raw_path_qs)
        meter = self.meter
        # A commit is held back before any of its bytes are counted, and again after a wait for
        # the head's tokens, just before sending (see the module docstring).
        meter.check_commit(method, url, headers)
        data = await meter.payload(head, body, time.monotonic())
        meter.check_commit(method, url, headers)
        try:
            response = await self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self.timeout,
                allow_redirects=False,
                proxy=None if proxy is None else proxy.url,
                proxy_auth=None if proxy is None else proxy.auth,
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise sdk_error(err, reading=False) from err
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise sdk_error(err, reading=True) from err
        finally:
            response.release()
        return Answer(response.status, response.reason, response.headers, content)


def sdk_error(err: BaseException, reading: bool) -> AzureError:
    """What the SDK's aiohttp transport raises for `err`, met while sending a request or while
    `reading` its answer's body."""
    if reading and isinstance(err, aiohttp.ClientPayloadError):  # closed before the end
        return IncompleteReadError(err, error=err)
    if isinstance(err, aiohttp.ClientResponseError):
        return ServiceResponseError(err, error=err)
    if not reading and isinstance(err, aiohttp.ConnectionTimeoutError):
        return ServiceRequestTimeoutError(err, error=err)
    if isinstance(err, TimeoutError):
        return ServiceResponseTimeoutError(err, error=err)
    return ServiceRequestError(err, error=err)


class MeteredTransport(AioHttpTransport):
    """The SDK's aiohttp transport, metered and proxied by `wire`, for the SDK's own requests."""

    def __init__(self, wire: Wire, **kwargs: Any) -> None:
        super().__init__(session=wire.session, session_owner=False, **kwargs)  # pyright: ignore[reportUnknownMemberType]
        self._wire = wire

    async def send(self, request: Any, **config: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        proxy = await self._wire.proxy_for(request.url)
        if proxy is not None:
            config.setdefault("proxy", proxy.url)
            config.setdefault("proxy_auth", proxy.auth)
        meter = self._wire.meter
        send = cast(Callable[..., Awaitable[Any]], super().send)  # pyright: ignore[reportUnknownMemberType]
        # The request that asked first is served first (see TokenBucket).
        priority = time.monotonic()
        data: object = request.data
        head = head_size(request.method, request.url, request.headers)
        if not isinstance(data, _BYTES):  # no body (or one we do not split): take it whole
            await meter.take(head, priority)
            meter.check_commit(request.method, request.url, request.headers)
            await meter.body(int(request.headers.get("Content-Length") or 0), priority)
            return await send(request, **config)
        meter.check_commit(request.method, request.url, request.headers)
        request.data = await meter.payload(head, cast(bytes, data), priority)
        meter.check_commit(request.method, request.url, request.headers)
        try:
            return await send(request, **config)
        finally:
            request.data = data
