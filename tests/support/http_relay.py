"""A TCP relay to Azurite that counts the HTTP requests going through it, and can cut off the
client behind it (refuse connections, or swallow everything like a dead link).

Requests are read off the client's byte stream (heads, then `Content-Length` bytes of body),
so a count is the number of requests on the wire, retries included, not what a client
believes it sent.
"""

import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from tests.support.relay import Relay

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
class HttpRelay(Relay):
    """`tests/support/relay.Relay`, reading requests off each client's stream."""

    mode: Mode = "pass"
    requests: list[Request] = field(default_factory=list[Request])
    _sockets: set[socket.socket] = field(default_factory=set[socket.socket])
    # Connections that lost bytes to a blackhole: they never carry anything again.
    _poisoned: set[socket.socket] = field(default_factory=set[socket.socket])

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

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        parser = _Parser() if count else None
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
