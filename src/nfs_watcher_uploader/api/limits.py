"""What one HTTP client can cost the process, bounded (the pod's memory limit is 1 GiB, and a
request is read before anyone knows whether it carries the token).

    head    at most MAX_REQUEST_HEAD bytes (h11's limit: 400 beyond), arriving within
            REQUEST_HEAD_TIMEOUT_S (then the connection is closed)
    body    at most MAX_REQUEST_BODY bytes: 413 before any of it is read when Content-Length
            says more, or as soon as a chunked body passes the limit; within
            REQUEST_BODY_TIMEOUT_S (408)
    count   at most MAX_CONNECTIONS connections; more are closed at once
    upgrade none: this API has no WebSocket
"""

import asyncio
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from nfs_watcher_uploader.constants import (
    MAX_CONNECTIONS,
    MAX_REQUEST_BODY,
    MAX_REQUEST_HEAD,
    REQUEST_BODY_TIMEOUT_S,
    REQUEST_HEAD_TIMEOUT_S,
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the two bounds uvicorn lacks: a deadline for each request's
    head (a client sending one header a minute would otherwise hold its connection, and up to
    16 KiB, forever) and a cap on open connections."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._watch_head()

    def _watch_head(self) -> None:
        cycle: object = self.cycle
        self._head_timer = self.loop.call_later(REQUEST_HEAD_TIMEOUT_S, self._head_due, cycle)

    def _head_due(self, cycle_then: object) -> None:
        """Close the connection if no request began since the timer was set and none is being
        answered; otherwise look again later."""
        cycle: Any = self.cycle
        if cycle is cycle_then and (cycle is None or cycle.response_complete):
            self.transport.close()
        else:
            self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)


def server_options() -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config arguments that apply these bounds."""
    return {
        "http": BoundedH11Protocol,
        "h11_max_incomplete_event_size": MAX_REQUEST_HEAD,
        "ws": "none",
    }


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)  # h11 has already refused a malformed one
    return None


class BodyLimit:
    """ASGI middleware: reads a request's body (at most `limit` bytes, within `timeout`) before
    the app sees the request, and hands it to the app from memory."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_REQUEST_BODY,
        timeout: float = REQUEST_BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"request body is larger than {self.limit} bytes"}, 413)
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await too_large(scope, receive, send)  # uvicorn discards what the client still sends
            return
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client is gone: nothing to answer
                    body += message.get("body", b"")
                    if len(body) > self.limit:
                        await too_large(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            slow = f"request body did not arrive within {self.timeout:.0f} s"
            await JSONResponse({"detail": slow}, 408)(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the whole body once, then whatever the server says next
    (a disconnect)."""
    pending = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed
