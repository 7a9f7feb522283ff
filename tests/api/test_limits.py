"""What one HTTP client can cost is bounded: body, head, time and connections."""

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfs_watcher_uploader.constants import (
    MAX_CONNECTIONS,
    MAX_REQUEST_BODY,
    REQUEST_BODY_TIMEOUT_S,
    REQUEST_HEAD_TIMEOUT_S,
)
from tests.support.helpers import Azurite, ServiceProcess, make_settings, wait_for

MIB = 1024 * 1024


BIG = 300 * MIB


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[ServiceProcess]:
    """One service process, without an API token (as `make run` starts it)."""
    root = tmp_path_factory.mktemp("limits")
    proc = ServiceProcess(make_settings(root, azurite, "limits"), root / "service.log")
    proc.start()
    yield proc
    proc.signal(15)


def _connect(service: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it is still open after
    `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def _chunks(count: int) -> Iterator[bytes]:
    chunk = b"x" * MIB
    for _ in range(count):
        yield chunk


def test_a_service_without_a_token_warns_once_that_its_api_is_open(service: ServiceProcess) -> None:
    assert service.log.read_text().count("APP_API_TOKEN is not set") == 1
    with service.client as c:
        assert c.get("/v1/status").status_code == 200


def test_a_300_mib_body_is_refused_unread(service: ServiceProcess) -> None:
    before = service.peak_rss()
    with service.client as c:
        declared = c.post(
            "/v1/watch/start",
            content=_chunks(BIG // MIB),
            headers={"Content-Length": str(BIG), "Content-Type": "application/json"},
            timeout=300,
        )
        assert declared.status_code == 413, declared.text
        assert f"larger than {MAX_REQUEST_BODY} bytes" in declared.json()["detail"]
        chunked = c.post(
            "/v1/files/retry",
            content=_chunks(BIG // MIB),
            headers={"Content-Type": "application/json"},
            timeout=300,
        )
        assert chunked.status_code == 413, chunked.text
        # Nothing was started, and a request of the ordinary size still works.
        assert c.get("/v1/status").json()["active_session"] is None
        assert c.post("/v1/files/retry", json={"session_name": "x" * 100}).status_code == 200
    peak = service.peak_rss()
    print(f"peak RSS before {before / MIB:.0f} MiB, after two 300 MiB bodies {peak / MIB:.0f} MiB")
    assert peak < BIG, f"peak RSS {peak / MIB:.0f} MiB"
    assert peak - before < 32 * MIB


def test_a_huge_head_is_refused(service: ServiceProcess) -> None:
    before = service.peak_rss()
    sock = _connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, answer = 0, b""
    while sent < 256 * MIB:
        if select.select([sock], [], [], 0)[0]:
            answer = _closed_within(sock, 10) or b""
            break
        try:
            sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            answer = _closed_within(sock, 10) or b""
            break
        sent += 65536
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), (sent, answer[:200])
    assert sent < 64 * MIB
    assert service.peak_rss() - before < 32 * MIB


def test_slow_heads_and_bodies_are_cut_off(service: ServiceProcess) -> None:
    head = _connect(service)
    head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    body = _connect(service)
    body.sendall(
        b"POST /v1/files/retry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    started = time.monotonic()
    assert _closed_within(head, 2 * REQUEST_HEAD_TIMEOUT_S + 20) == b""
    took = time.monotonic() - started
    assert REQUEST_HEAD_TIMEOUT_S - 1 < took < 2 * REQUEST_HEAD_TIMEOUT_S + 20
    body.settimeout(REQUEST_BODY_TIMEOUT_S + 20)
    assert body.recv(4096).startswith(b"HTTP/1.1 408")
    head.close()
    body.close()


def test_connections_beyond_the_cap_are_closed(service: ServiceProcess) -> None:
    extra = 8
    socks = [_connect(service) for _ in range(MAX_CONNECTIONS + extra)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head that does not end
    closed: set[int] = set()

    def enough_closed() -> bool:
        open_ = [i for i in range(len(socks)) if i not in closed]
        for i in open_:
            if select.select([socks[i]], [], [], 0)[0] and _closed_within(socks[i], 1) == b"":
                closed.add(i)
        return len(closed) >= extra

    wait_for(enough_closed, timeout=30, what=f"{extra} connections closed")
    # The last ones to arrive were closed; the first MAX_CONNECTIONS are still open (another
    # connection of ours may have been on its way out when the first of them arrived).
    assert min(closed) >= MAX_CONNECTIONS - 2, sorted(closed)
    for sock in socks:
        sock.close()

    def healthy() -> bool:
        with service.client as c:
            return c.get("/healthz").status_code == 200

    wait_for(healthy, timeout=30, what="/healthz once the connections are gone")


def test_the_log_never_shows_a_body_or_a_head(service: ServiceProcess, tmp_path: Path) -> None:
    text = service.log.read_text()
    assert "xxxxxxxx" not in text and "aaaaaaaa" not in text
