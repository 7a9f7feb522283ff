"""A counting TCP relay for tests: what really went over the wire to storage.

The service is pointed at the relay's port; the relay forwards to the real Azurite (or to
tinyproxy's target) and records, with a timestamp, every chunk of bytes a client sent upstream.
With `allow`, connections from any other peer address are refused (counted in `refused`). With
`record`, it also keeps those bytes, per connection, and `recorded()` reads the HTTP/1.1
requests out of them (what a client really sent, header by header).
While `refuse` is set, every request is answered with it and nothing reaches Azurite
(`azure_firewall`: as Azure answers a client that the storage account's network rules do not let
in; `proxy_denied`: as a proxy answers a destination its rules deny); clear it and new
connections are relayed again (an administrator added the rule).
"""

import bisect
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.config import Settings

from .helpers import Azurite, free_port, make_settings


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP/1.1 request as it went over the wire: header names as sent, in order."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header_map(self) -> dict[str, str]:
        """Header names in lower case -> value (a name sent twice fails: none of ours is)."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            assert name.lower() not in out, f"{name} sent twice"
            out[name.lower()] = value
        return out


def parse_requests(stream: bytes) -> Iterator[Request]:
    """The requests in the bytes a client sent on one connection (bodies by Content-Length;
    neither chunked nor Expect: 100-continue is used by the storage clients)."""
    rest = stream
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"a request head with no end: {head[:200]!r}"
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = [(n, v.strip()) for n, _, v in (f.partition(":") for f in fields)]
        length = int(dict((n.lower(), v) for n, v in headers).get("content-length", "0"))
        yield Request(method, target, headers, rest[:length])
        rest = rest[length:]


@dataclass
class Relay:
    target_port: int
    allow: frozenset[str] | None = None
    record: bool = False
    port: int = field(default_factory=free_port)
    refused: int = 0
    connections: int = 0
    refuse: Callable[[bool], bytes] | None = None  # the answer, given whether it is to a HEAD
    refused_requests: int = 0
    _times: list[float] = field(default_factory=list[float])
    _totals: list[int] = field(default_factory=list[int])  # running total after each chunk
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list[threading.Thread])
    _listener: socket.socket | None = None
    # With `record`: connection number -> the bytes its client sent.
    _streams: dict[int, bytearray] = field(default_factory=dict[int, bytearray])
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/devstoreaccount1"

    def start(self) -> "Relay":
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, (peer, _) = self._listener.accept()
            except TimeoutError:
                continue
            if self.allow is not None and peer not in self.allow:
                self.refused += 1
                client.close()
                continue
            self.connections += 1
            if (answer := self.refuse) is not None:
                self._spawn(self._refuse, client, answer)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            stream = None
            if self.record:
                stream = self._streams.setdefault(next(self._numbers), bytearray())
            self._spawn(self._pump, client, upstream, True, stream)
            self._spawn(self._pump, upstream, client, False)

    def _pump(
        self, src: socket.socket, dst: socket.socket, count: bool, keep: bytearray | None = None
    ) -> None:
        src.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(256 * 1024)
                except TimeoutError:
                    continue
                if not data:
                    break
                if count:
                    with self._lock:
                        self._times.append(time.monotonic())
                        self._totals.append((self._totals[-1] if self._totals else 0) + len(data))
                        if keep is not None:
                            keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def _refuse(self, client: socket.socket, answer: Callable[[bool], bytes]) -> None:
        """Answer each request on `client` with `answer`, until it hangs up."""
        client.settimeout(0.5)
        buffer = b""
        try:
            while not self._stop.is_set():
                try:
                    data = client.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = _content_length(head)
                    while len(buffer) < length and (more := client.recv(65536)):
                        buffer += more
                    buffer = buffer[length:]
                    with self._lock:
                        self.refused_requests += 1
                    client.sendall(answer(head.startswith(b"HEAD ")))
        except OSError:
            pass
        finally:
            client.close()

    # --- what was sent ---------------------------------------------------------------------

    def recorded(self) -> list[Request]:
        """Every request recorded so far (`record`), connection by connection, and forget them.
        Call it once the client has its answers: a request still on its way would be cut."""
        with self._lock:
            streams = [bytes(s) for s in self._streams.values()]
            for s in self._streams.values():
                s.clear()
        return [r for stream in streams for r in parse_requests(stream)]

    @property
    def total(self) -> int:
        with self._lock:
            return self._totals[-1] if self._totals else 0

    def first_and_last(self, after: float = 0.0) -> tuple[float, float]:
        """When the first byte after monotonic time `after`, and the last byte, were sent."""
        with self._lock:
            return self._times[bisect.bisect_right(self._times, after)], self._times[-1]

    def sent_until(self, t: float) -> int:
        """Bytes sent upstream up to monotonic time `t`."""
        with self._lock:
            i = bisect.bisect_right(self._times, t)
            return self._totals[i - 1] if i else 0

    def rate(self, start: float, end: float) -> float:
        """Bytes per second sent upstream between `start` and `end`."""
        return (self.sent_until(end) - self.sent_until(start)) / (end - start)

    def windows(
        self, start: float, end: float, width: float = 2.0, step: float = 0.1
    ) -> list[float]:
        """The rate over every `width`-second window from `start` to `end`, `step` apart."""
        rates: list[float] = []
        t = start
        while t + width <= end + 1e-9:
            rates.append(self.rate(t, t + width))
            t += step
        return rates


def through(relay: Relay, azurite: Azurite, tmp_path: Path, container: str, **kw: Any) -> Settings:
    """Settings that reach Azurite only through `relay`."""
    return make_settings(
        tmp_path,
        azurite,
        container,
        azure_account_url=relay.url,
        azure_connection_string=azurite.connection_string.replace(azurite.url, relay.url),
        **kw,
    )


# What Azure answers when the storage account's network rules (firewall, private endpoint) do
# not let the client in: github.com/microsoft/AzureStorageExplorer/issues/8183, for one.
FIREWALL_MESSAGE = "This request is not authorized to perform this operation."


def azure_firewall(head_only: bool) -> bytes:
    """Azure's 403 AuthorizationFailure for a client its network rules refuse."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure</Code>'
        f"<Message>{FIREWALL_MESSAGE}\nRequestId:{uuid.uuid4()}\n"
        "Time:2026-12-04T00:00:00.0000000Z</Message></Error>"
    )
    headers = {
        "Content-Type": "application/xml",
        "Server": "Microsoft-HTTPAPI/2.0",
        "x-ms-error-code": "AuthorizationFailure",
        "x-ms-request-id": str(uuid.uuid4()),
    }
    return _answer(f"403 {FIREWALL_MESSAGE}", headers, body, head_only)


def proxy_denied(status: int) -> Callable[[bool], bytes]:
    """A proxy's own answer `status` (403: a destination its rules deny, as tinyproxy's filter
    or squid's ACLs answer): an HTML page, nothing of Azure's."""

    def answer(head_only: bool) -> bytes:
        body = f"<html><body><h1>{status}</h1><p>Access denied by the proxy.</p></body></html>"
        return _answer(f"{status} Denied", {"Content-Type": "text/html"}, body, head_only)

    return answer


def _answer(status: str, headers: dict[str, str], body: str, head_only: bool) -> bytes:
    data = body.encode()
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Date: {formatdate(usegmt=True)}", f"Content-Length: {len(data)}", "", ""]
    head = "\r\n".join(lines).encode()
    return head if head_only else head + data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return 0
