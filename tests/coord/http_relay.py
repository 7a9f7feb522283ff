"""A TCP relay to Azurite that counts the HTTP requests going through it, and can cut off the
client behind it (refuse connections, or swallow everything like a dead link).

Requests are read off the client's byte stream (heads, then `Content-Length` bytes of body),
so a count is the number of requests on the wire, retries included, not what a client
believes it sent.
"""

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from ..helpers import free_port

Mode = Literal["pass", "refuse", "blackhole"]


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # monotonic
    method: str
    path: str  # with its query


class _Parser:
    """Cuts a client's byte stream into requests."""

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
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
            found.append((method, path))
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self._body_left = int(value.strip() or 0)


@dataclass
class HttpRelay:
    target_port: int
    port: int = field(default_factory=free_port)
    mode: Mode = "pass"
    requests: list[Request] = field(default_factory=list[Request])
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sockets: set[socket.socket] = field(default_factory=set[socket.socket])
    # Connections that lost bytes to a blackhole: they never carry anything again.
    _poisoned: set[socket.socket] = field(default_factory=set[socket.socket])
    _threads: list[threading.Thread] = field(default_factory=list[threading.Thread])
    _listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/devstoreaccount1"

    def start(self) -> "HttpRelay":
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.cut("refuse")
        for thread in self._threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()

    def cut(self, mode: Mode) -> None:
        """From now on: `refuse` new connections and close open ones, or `blackhole` (accept
        and forward nothing, either way), or `pass` again."""
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

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                mode = self.mode
            if mode == "refuse":
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
                if mode == "blackhole":
                    self._poisoned.add(client)
            self._spawn(self._pump, client, upstream, _Parser())
            self._spawn(self._pump, upstream, client, None)

    def _pump(self, src: socket.socket, dst: socket.socket, parser: _Parser | None) -> None:
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
                    if parser is not None:
                        now = time.monotonic()
                        self.requests.extend(Request(now, m, p) for m, p in parser.feed(data))
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
