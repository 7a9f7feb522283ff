"""What goes over the wire to storage: every request takes its bytes from the bandwidth bucket,
and its body leaves as a stream of chunks that each take theirs, so that a cap (or a new cap)
holds within a chunk, also on a block already in flight.

The SDK hands the transport a request whose body is bytes (a block, a small file, a block
list); for one attempt, the transport sends it as a stream of memoryview chunks, with the
Content-Length the SDK set. A retry comes through here again, with the original bytes. Nothing
is copied and nothing about the bytes changes: each request still carries the MD5 that Azure
checks.

Commits (Put Blob, Put Block List) pass a gate first, after they have waited for bandwidth and
just before they are sent: with APP_COORDINATION=azure a member whose validity ended meanwhile
commits nothing (a commit may wait behind 8 MiB blocks under a cap for longer than a lease).
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
from azure.core.pipeline.transport import AioHttpTransport
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

    def check_commit(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        """Raise RetryableError when `request` is a commit and the gate is closed."""
        gate = self.commit_gate
        if gate is not None and is_commit(method, url, headers) and not gate():
            self.commits_held += 1
            raise RetryableError("not a valid member now: the commit is held back")

    def rate(self) -> float:
        """Bytes per second sent to storage (headers included) over the last few seconds."""
        return self._sent.per_second()

    async def take(self, size: int, priority: float) -> None:
        await self.bucket.take(size, priority, WAITING.get())
        self._sent.add(size)
        self.total_sent += size

    async def stream(self, body: memoryview, priority: float) -> AsyncIterator[memoryview]:
        """`body` in chunks, each sent once the bucket allows; the chunk size follows the cap
        in force at each chunk."""
        offset = 0
        while offset < len(body):
            size = UNCAPPED_CHUNK if self.bucket.rate is None else CAPPED_CHUNK
            piece = body[offset : offset + size]
            await self.take(len(piece), priority)
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


class MeteredTransport(AioHttpTransport):
    """The SDK's aiohttp transport, metered by `meter`, through the environment's proxy."""

    def __init__(self, meter: Meter, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # pyright: ignore[reportUnknownMemberType]
        self._meter = meter
        # scheme://host:port -> its proxy (None: straight).
        self._proxies: dict[str, Proxy | None] = {}

    async def _proxy_for(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if origin not in self._proxies:
            self._proxies[origin] = await asyncio.to_thread(env_proxy, origin)
        return self._proxies[origin]

    async def send(self, request: Any, **config: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        proxy = await self._proxy_for(request.url)
        if proxy is not None:
            config.setdefault("proxy", proxy.url)
            config.setdefault("proxy_auth", proxy.auth)
        meter = self._meter
        send = cast(Callable[..., Awaitable[Any]], super().send)  # pyright: ignore[reportUnknownMemberType]
        # The request that asked first is served first (see TokenBucket).
        priority = time.monotonic()
        data: object = request.data
        head = len(request.method) + len(request.url) + REQUEST_OVERHEAD
        head += sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        await meter.take(head, priority)
        meter.check_commit(request.method, request.url, request.headers)
        if not isinstance(data, _BYTES):  # no body (or one we do not split): take it whole
            await meter.take(int(request.headers.get("Content-Length") or 0), priority)
            return await send(request, **config)
        body = memoryview(cast(bytes, data))
        if len(body) <= UNCAPPED_CHUNK and meter.bucket.rate is None:  # one chunk anyway
            await meter.take(len(body), priority)
            return await send(request, **config)
        request.data = meter.stream(body, priority)
        try:
            return await send(request, **config)
        finally:
            request.data = data
