"""`nfs-watcher-uploader status`, the real console script against a real service: the picture,
`--json` that parses, `--watch` that redraws in place in a terminal (a pty), its exit statuses
(0 healthy, 1 something parked, 2 unreachable or the token refused, saying what to set), and no
control character from a file name ever reaching the terminal."""

import argparse
import http.server
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from fcntl import ioctl
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.cli import status as status_cli
from nfs_watcher_uploader.config import Settings
from tests.support.helpers import (
    ROOT,
    HeldCopy,
    RunningService,
    free_port,
    session_view,
    wait_for,
    write_file,
)

TOKEN = "status-cli-token-0123456789"
CLI = str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader")
# A name that would recolour, retitle and clear a terminal, and ring its bell; parked for its
# trailing '.'.
HOSTILE = "\x1b[31mred\x1b]0;pwned\x07\x1b[2J\r\n."
# Our own sequences: home, clear line/below/all, hide/show the cursor.
OURS = re.compile(r"\x1b\[(H|K|J|2J|\?25[lh])")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return {**env, **extra}


def _status(
    running: RunningService | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    url = running.base_url if running is not None else f"http://127.0.0.1:{free_port()}"
    return subprocess.run(
        [CLI, "status", "--url", url, *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _start(service_factory: Any, settings_factory: Any) -> RunningService:
    settings: Settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "cli"})
    write_file(settings.nfs_incoming_dir / "cli" / "ok.bin", b"fine" * 1000)
    wait_for(lambda: session_view(running, "cli")["uploaded"] == 1, what="ok.bin up")
    return running


def test_a_healthy_service_exits_0_and_shows_its_sessions(
    service_factory: Any, settings_factory: Any
) -> None:
    running = _start(service_factory, settings_factory)
    done = _status(running, APP_API_TOKEN=TOKEN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy | ready" in done.stdout
    assert re.search(r"^cli\s+active\s+\[#+\]\s+100 %", done.stdout, re.M), done.stdout
    assert "FILES IN FLIGHT (0)" in done.stdout and "Nothing in flight." in done.stdout
    assert TOKEN not in done.stdout + done.stderr


def test_json_parses_and_a_parked_file_exits_1_with_its_name_made_printable(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    running = _start(service_factory, settings_factory)
    write_file(running.settings.nfs_incoming_dir / "cli" / HOSTILE, b"x")
    wait_for(lambda: session_view(running, "cli")["failed"] == 1, what="the hostile name parked")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    done = _status(running, "--json", "--token-file", str(token_file))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["exit_status"] == 1 and report["problems"] == ["1 file(s) parked"]
    assert [s["session_name"] for s in report["sessions"]] == ["cli"]
    assert report["parked"][0]["filename"] == "\\x1b[31mred\\x1b]0;pwned\\x07\\x1b[2J\\r\\n."

    text = _status(running, "--token-file", str(token_file))
    assert text.returncode == 1
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout and "\r" not in text.stdout
    assert "\\x1b[31mred" in text.stdout and "NEEDS A LOOK: 1 file(s) parked" in text.stdout


def test_unreachable_or_refused_exits_2_saying_what_to_do(
    service_factory: Any, settings_factory: Any
) -> None:
    nobody = _status(None)
    assert nobody.returncode == 2
    assert "cannot reach the service at http://127.0.0.1:" in nobody.stderr
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/", "http://127.0.0.1:1/?token=x"):
        refused = subprocess.run(
            [CLI, "status", "--url", url], env=_env(), capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and "--url must be http(s)://host:port" in refused.stderr

    running = _start(service_factory, settings_factory)
    without = _status(running)
    assert without.returncode == 2
    assert "needs its API token (401): set APP_API_TOKEN or APP_API_TOKEN_FILE" in without.stderr

    wrong = _status(running, APP_API_TOKEN="not-the-token-0123456789")
    assert wrong.returncode == 2 and "refused the token (401" in wrong.stderr
    assert "not-the-token" not in wrong.stderr

    as_json = _status(running, "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["exit_status"] == 2


def _frames(master: int, count: int, timeout: float) -> bytes:
    """Read the terminal until `count` frames were drawn (each begins with cursor-home)."""
    out = b""
    deadline = time.monotonic() + timeout
    while out.count(b"\x1b[H") < count + 1 and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    return out


def test_watch_redraws_in_place_within_the_terminal(
    service_factory: Any, settings_factory: Any
) -> None:
    """In a 24 x 100 terminal: every frame starts at the cursor's home, clears what is below it,
    has fewer lines than the terminal (so nothing scrolls) and no line wider than it; a file
    being uploaded shows up between frames; Ctrl-C ends it with the cursor shown again."""
    running = _start(service_factory, settings_factory)
    write_file(running.settings.nfs_incoming_dir / "cli" / HOSTILE, b"x")
    wait_for(lambda: session_view(running, "cli")["failed"] == 1, what="the hostile name parked")
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [CLI, "status", "--url", running.base_url, "--watch", "--interval", "0.2"],
        env=_env(APP_API_TOKEN=TOKEN),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        out = _frames(master, 3, timeout=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 1  # the last picture had a parked file
        out += _frames(master, 0, timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert text.startswith("\x1b[?25l\x1b[2J"), repr(text[:40])
    frames = text.split("\x1b[H")[1:]
    assert len(frames) >= 3, repr(text[:400])
    for frame in frames[:-1]:
        assert frame.endswith("\x1b[J"), repr(frame[-40:])
        lines = frame.split("\n")
        assert len(lines) - 1 < 24, f"a frame of {len(lines)} lines would scroll"
        for line in lines:
            plain = OURS.sub("", line).rstrip("\r")
            assert len(plain) <= 100, plain
            assert "\x1b" not in plain and "\x07" not in plain, repr(plain)
        assert "cli" in frame and "PARKED (1)" in frame
    assert text.endswith("\x1b[?25h") or "\x1b[?25h" in text[-200:]


def test_a_stalled_worker_exits_1_and_says_so(service_factory: Any, settings_factory: Any) -> None:
    """A copy that makes no progress past the liveness limit: /healthz fails, and `status`
    exits 1 naming it; the copy released, it exits 0 again."""
    held = HeldCopy("hold.bin")
    settings: Settings = settings_factory(api_token=TOKEN, liveness_timeout_s=1.0)
    running = service_factory(settings, copy=held)
    running.post("/v1/watch/start", json={"session_name": "stall"})
    write_file(settings.nfs_incoming_dir / "stall" / "hold.bin", b"x" * 1000)
    try:
        assert held.started.wait(30)
        wait_for(lambda: running.get("/healthz").status_code == 503, what="liveness failing")
        done = _status(running, APP_API_TOKEN=TOKEN)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "UNHEALTHY" in done.stdout
        assert "unhealthy: a worker has made no progress" in done.stdout
    finally:
        held.release.set()
    wait_for(lambda: session_view(running, "stall")["uploaded"] == 1, what="hold.bin up")
    assert _status(running, APP_API_TOKEN=TOKEN).returncode == 0


class JsonServer:
    """An HTTP server at 127.0.0.1 answering each GET with what `answer(path, authorization)`
    returns: a status and a JSON body."""

    def __init__(self, answer: Callable[[str, str | None], tuple[int, bytes]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HoldingProxy(JsonServer):
    """Forwards to the service, holding each request for the parked list until `release` (a
    parked listing stuck on a hung NFS mount, up to its 30 s deadline)."""

    def __init__(self, target: str) -> None:
        self.release = threading.Event()
        super().__init__(self._forward)
        self.target = target

    def _forward(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        if path.startswith("/v1/files/failed"):
            self.release.wait(60)
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = httpx.get(self.target + path, headers=headers, timeout=30)
        return answer.status_code, answer.content

    def close(self) -> None:
        self.release.set()
        super().close()


def test_a_parked_list_stuck_on_nfs_is_named_and_the_rest_still_shown(
    service_factory: Any, settings_factory: Any
) -> None:
    """The parked list is the one answer read from NFS: while it hangs, `status` still shows
    sessions and health from the rest, says the list could not be read and why (exit 1), and
    does not call the service unreachable (exit 2)."""
    running = _start(service_factory, settings_factory)
    write_file(running.settings.nfs_incoming_dir / "cli" / "stuck.", b"x")
    wait_for(lambda: session_view(running, "cli")["failed"] == 1, what="stuck. parked")
    proxy = HoldingProxy(running.base_url)
    try:
        command = [CLI, "status", "--json", "--url", proxy.url]
        env = _env(APP_API_TOKEN=TOKEN)
        held = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert held.returncode == 1, held.stdout + held.stderr
        report = json.loads(held.stdout)
        assert [s["session_name"] for s in report["sessions"]] == ["cli"]
        assert report["parked"] == [] and "timed out" in report["parked_error"]
        assert report["problems"][0] == "1 file(s) parked"
        assert report["problems"][1].startswith("parked files not listed: ")
        proxy.release.set()
        answered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        report = json.loads(answered.stdout)
        assert answered.returncode == 1 and report["parked_error"] is None
        assert [p["filename"] for p in report["parked"]] == ["stuck."]
    finally:
        proxy.close()


@pytest.mark.adversarial
@pytest.mark.parametrize("status", [401, 500])
def test_an_error_answer_reaches_the_terminal_printable(status: int) -> None:
    """Review of issues 22/23, finding 1: the detail of an error answer (a service of another
    kind at --url, or one whose errors quote names) is printed made printable, like every
    name: no escape sequence of its reaches the terminal, and the exit status is still 2."""
    body = json.dumps({"detail": HOSTILE}).encode()
    server = JsonServer(lambda path, authorization: (status, body))
    try:
        result = subprocess.run(
            [CLI, "status", "--url", server.url],
            env=_env(APP_API_TOKEN=TOKEN),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.close()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr, repr(result.stderr)
    assert "\\x1b[31mred" in result.stderr


@pytest.mark.adversarial
def test_watch_shows_a_parked_list_that_changed_at_the_same_count() -> None:
    """Review of issues 22/23, finding 2: `status --watch` asks for the parked list again when
    it is old (as the page does), not only when the count changes: a file dismissed while
    another is parked, or one retried and parked again for a new reason, leaves the count as it
    was, and the list drawn must not stay the old one for as long as the watch runs."""
    parked = {"name": "first.bin"}
    status = json.dumps({"failed": 1, "sessions": []}).encode()

    def answer(path: str, authorization: str | None) -> tuple[int, bytes]:
        if path.startswith("/v1/files/failed"):
            one = {"session_name": "s", "date_prefix": "20261205", "reason": "bad"}
            files = [{**one, "filename": parked["name"], "parked_as": parked["name"]}]
            return 200, json.dumps({"files": files, "truncated": False}).encode()
        if path.startswith("/v1/sessions"):
            return 200, json.dumps({"sessions": [], "ended_total": 0}).encode()
        return 200, status

    server = JsonServer(answer)
    now = [0.0]
    frames = [0]

    def sleep(seconds: float) -> None:
        frames[0] += 1
        if frames[0] == 2:  # dismissed, and another parked: the count stays 1
            parked["name"] = "second.bin"
        if frames[0] == 4:
            raise KeyboardInterrupt
        now[0] += 60.0

    out = io.StringIO()
    args = argparse.Namespace(json=True, interval=1.0)
    try:
        status_cli.watch(
            status_cli.Client(server.url, None), args, out, sleep, clock=lambda: now[0]
        )
    finally:
        server.close()
    last = json.loads(out.getvalue().splitlines()[-1])
    assert [p["filename"] for p in last["parked"]] == ["second.bin"]
