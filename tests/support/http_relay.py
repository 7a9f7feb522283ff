"""A TCP relay to Azurite that counts the HTTP requests going through it, pairs each with the
status of its answer, and can cut off the client behind it (refuse connections, or swallow
everything like a dead link).

Requests are read off the client's byte stream (heads, then `Content-Length` bytes of body),
so a count is the number of requests on the wire, retries included, not what a client
believes it sent. Answers are read off the server's stream (status line, headers, a body by
Content-Length or chunked, none for HEAD, 204 and 304) and paired with the requests of the
same connection in order (HTTP/1.1 without pipelining, as the SDKs send): so a commit counts
only when storage answered it 2xx (`commits`), not when a client tried it.
"""

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from tests.support.relay import Relay

Mode = Literal["pass", "refuse", "blackhole"]


@dataclass(slots=True)
class Request:
    at: float  # monotonic
    method: str
    path: str  # with its query
    blob_type: str | None = None  # x-ms-blob-type: a Put Blob
    status: int | None = None  # of the answer; None: none came (yet)
    answered_at: float | None = None

    @property
    def is_commit(self) -> bool:
        """Put Block List, or Put Blob."""
        if self.method != "PUT":
            return False
        query = urlsplit(self.path).query
        return "comp=blocklist" in query or ("comp=" not in query and self.blob_type is not None)

    @property
    def blob(self) -> str:
        """The blob's name, from the path (`/<account>/<container>/<blob>`, decoded)."""
        parts = unquote(urlsplit(self.path).path).lstrip("/").split("/", 2)
        return parts[2] if len(parts) > 2 else ""


class _Parser:
    """Cuts a client's byte stream into requests."""

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> list[tuple[str, str, dict[str, str]]]:
        found: list[tuple[str, str, dict[str, str]]] = []
        self._buffer += data
        while True:
            if self._body_left:
                taken = min(self._body_left, len(self._buffer))
                self._buffer, self._body_left = self._buffer[taken:], self._body_left - taken
                if self._body_left:
                    return found
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return found
            head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
            lines = head.split("\r\n")
            method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
            headers = _headers(lines[1:])
            found.append((method, path, headers))
            self._body_left = int(headers.get("content-length") or 0)


def _headers(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return out


class _Answers:
    """Cuts a server's byte stream into answers, given the methods of the requests in order."""

    def __init__(self, methods: deque[Request]) -> None:
        self._buffer = b""
        self._requests = methods
        self._body_left = 0
        self._chunked = False
        self._current: Request | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self._body_left:
            taken = min(self._body_left, len(self._buffer))
            self._buffer, self._body_left = self._buffer[taken:], self._body_left - taken
            return not self._body_left and self._finish_body()
        if self._chunked:
            return self._chunk()
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            return False
        headers = _headers(lines[1:])
        request = self._requests.popleft() if self._requests else None
        if request is not None and status >= 200:  # 100 Continue is not the answer
            request.status, request.answered_at = status, time.monotonic()
        elif request is not None:
            self._requests.appendleft(request)
        no_body = status in (204, 304) or status < 200 or (request and request.method == "HEAD")
        if no_body:
            return True
        if headers.get("transfer-encoding", "").lower() == "chunked":
            self._chunked = True
            return True
        self._body_left = int(headers.get("content-length") or 0)
        return True

    def _finish_body(self) -> bool:
        return True

    def _chunk(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(self._buffer[:end].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer = self._buffer.find(b"\r\n\r\n", end)
            if trailer < 0:
                return False
            self._buffer = self._buffer[trailer + 4 :]
            self._chunked = False
            return True
        if len(self._buffer) < end + 2 + size + 2:
            return False
        self._buffer = self._buffer[end + 2 + size + 2 :]
        return True


@dataclass
class HttpRelay(Relay):
    """`tests/support/relay.Relay`, reading requests and their answers off each connection."""

    mode: Mode = "pass"
    requests: list[Request] = field(default_factory=list[Request])
    _sockets: set[socket.socket] = field(default_factory=set[socket.socket])
    # Connections that lost bytes to a blackhole: they never carry anything again.
    _poisoned: set[socket.socket] = field(default_factory=set[socket.socket])
    # The client socket of a connection -> its requests not answered yet, in order.
    _waiting: dict[socket.socket, deque[Request]] = field(
        default_factory=dict[socket.socket, deque[Request]]
    )
    _pair_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "HttpRelay":
        super().start()
        return self

    def stop(self) -> None:
        self.cut("refuse")
        super().stop()

    def cut(self, mode: Mode) -> None:
        """From now on: `refuse` connections (open ones are closed), or `blackhole` (accept and
        forward nothing, either way), or `pass` again."""
        with self._lock:
            self.mode = mode
            if mode == "blackhole":
                self._poisoned |= self._sockets
                return
            doomed = set(self._sockets if mode == "refuse" else self._poisoned)
        for sock in doomed:
            _close(sock)

    def count(self, since: float = 0.0, method: str | None = None, has: str = "") -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.at >= since and (method is None or r.method == method) and has in r.path
            )

    def commits(self, container: str) -> list[Request]:
        """The commits of blobs in `container` that storage answered 2xx."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.is_commit
                and r.status is not None
                and 200 <= r.status < 300
                and urlsplit(r.path).path.lstrip("/").split("/")[1:2] == [container]
            ]

    def _queue_of(self, client: socket.socket) -> deque[Request]:
        with self._pair_lock:
            return self._waiting.setdefault(client, deque())

    def _pump(
        self, src: socket.socket, dst: socket.socket, count: bool, keep: bytearray | None = None
    ) -> None:
        # count: src is the client (requests); else dst is (answers). `keep` (Relay's `record`)
        # is not used: every request is parsed into `requests` here.
        parser = _Parser() if count else None
        answers = None if count else _Answers(self._queue_of(dst))
        waiting = self._queue_of(src) if count else None
        with self._lock:
            if self.mode == "refuse":
                doomed = True
            else:
                doomed = False
                self._sockets |= {src, dst}
                if self.mode == "blackhole":
                    self._poisoned.add(src)
        if doomed:
            _close(src)
            _close(dst)
            return
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(256 * 1024)
                except TimeoutError:
                    continue
                if not data:
                    break
                with self._lock:
                    if self.mode == "blackhole" or src in self._poisoned:
                        self._poisoned.add(src)
                        continue
                    if parser is not None and waiting is not None:
                        now = time.monotonic()
                        for method, path, headers in parser.feed(data):
                            request = Request(now, method, path, headers.get("x-ms-blob-type"))
                            self.requests.append(request)
                            with self._pair_lock:
                                waiting.append(request)
                    if answers is not None:
                        with self._pair_lock:
                            answers.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {src, dst}
                self._poisoned -= {src, dst}
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
