"""`nfs-watcher-uploader status`: what the service is doing, in a terminal, from its API.

    nfs-watcher-uploader status [--url URL] [--watch] [--json] [--token-file FILE]

Reads the API at --url (default http://127.0.0.1:$APP_PORT, 8000 when unset) with the token from
--token-file, APP_API_TOKEN or APP_API_TOKEN_FILE, and shows the health and readiness, the uplink
(rate, limit), every watched session (and the latest ended ones) with a progress bar, the files
in flight, and how many files are parked. --watch draws it again every --interval seconds in
place (the cursor goes home; the screen does not scroll); --json prints the same as one JSON
object (with --watch, one a line).

Exit status: 0 healthy, ready and nothing parked; 1 something needs a look (files parked, a
worker or the watcher stalled, not ready, the session state unreadable, NFS calls hung); 2 the
service cannot be reached or refuses the token (the message says what to set).

The token goes only to --url: no proxy is used and no redirect is followed. Everything the API
says is made printable before it reaches the terminal (no control character, no escape
sequence from a file name).
"""

import argparse
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nfs_watcher_uploader.items import printable

HELP = (
    "show what the service is doing: sessions, files in flight, bandwidth "
    "(exit 0 healthy, 1 something parked or stalled, 2 service unreachable)"
)
TIMEOUT_S = 10.0
# The parked list is the one answer the service reads from NFS: while NFS hangs it may take
# up to the NFS deadline (30 s by default). It gets a shorter wait, and its failure is shown
# in the picture instead of calling the whole service unreachable.
PARKED_TIMEOUT_S = 5.0
# `--watch` asks for the parked list again when their count changes, and at least this often
# (as the page does): a file dismissed while another is parked, or parked again for another
# reason, leaves the count as it was.
PARKED_EVERY_S = 15.0
ENDED_SHOWN = 5
PARKED_SHOWN = 5
BAR_WIDTH = 20
UNCUT_WIDTH = 1000
# ANSI: cursor home, clear to the end of the line and of the screen, hide and show the cursor.
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_ALL = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"

Json = dict[str, Any]


class Unreachable(Exception):
    """The service cannot be asked (no answer, or the token is refused): exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    port = os.environ.get("APP_PORT") or "8000"
    parser.add_argument(
        "--url", default=f"http://127.0.0.1:{port}", help="the service (default: %(default)s)"
    )
    parser.add_argument("--watch", action="store_true", help="draw again every --interval")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="a file holding the API token (default: APP_API_TOKEN, or APP_API_TOKEN_FILE)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between draws (default: 1)"
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points: refused."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Client:
    """GETs from the API with the token, straight to `url` (no proxy, no redirect)."""

    url: str
    token: str | None
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise Unreachable(f"--url must be http(s)://host:port, not {printable(self.url)!r}")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def get(self, path: str, ok: tuple[int, ...] = (200,), timeout: float = TIMEOUT_S) -> Json:
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code in ok:
                return json.loads(body)
            raise Unreachable(self._refusal(exc.code, body)) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"cannot reach the service at {self.url}: {reason}") from None

    def _refusal(self, code: int, body: bytes) -> str:
        try:
            detail = printable(str(json.loads(body).get("detail", "")))
        except (ValueError, AttributeError):
            detail = ""
        if code == 401 and not self.token:
            return (
                f"the service at {self.url} needs its API token (401): set APP_API_TOKEN or "
                "APP_API_TOKEN_FILE, or pass --token-file FILE"
            )
        if code == 401:
            return (
                f"the service at {self.url} refused the token (401: {detail}): check "
                "APP_API_TOKEN, APP_API_TOKEN_FILE or --token-file (the token the service was "
                "started with)"
            )
        return f"the service at {self.url} answered {code}: {detail or 'no detail'}"


def read_token(token_file: Path | None, env: dict[str, str]) -> str | None:
    """The token: --token-file, else APP_API_TOKEN, else APP_API_TOKEN_FILE (None: none)."""
    if token_file is not None:
        path = token_file
    elif env.get("APP_API_TOKEN"):
        return env["APP_API_TOKEN"].strip()
    elif env.get("APP_API_TOKEN_FILE"):
        path = Path(env["APP_API_TOKEN_FILE"])
    else:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise Unreachable(f"cannot read the token file {path}: {reason}") from None


@dataclass
class Snapshot:
    """What the API said at one moment."""

    url: str
    health: Json
    ready: Json
    status: Json
    sessions: list[Json]
    bandwidth: Json
    parked: list[Json]
    # Why the parked list could not be read (NFS slow or failing), or None.
    parked_error: str | None = None
    at: float = field(default_factory=time.time)

    def problems(self) -> list[str]:
        """What needs a look (empty: healthy)."""
        out: list[str] = []
        if not self.health.get("ok", False):
            out.append(f"unhealthy: {self.health.get('detail') or 'stalled'}")
        if not self.ready.get("ready", False):
            out.append(f"not ready: {self.ready.get('detail') or 'starting'}")
        if failed := self.status.get("failed", 0):
            out.append(f"{failed} file(s) parked")
        if self.parked_error is not None:
            out.append(f"parked files not listed: {self.parked_error}")
        if error := self.status.get("state_error"):
            out.append(f"session state: {error}")
        if hung := self.status.get("nfs_calls_hung", 0):
            out.append(f"{hung} NFS call(s) hung")
        return [printable(str(p)) for p in out]

    def exit_status(self) -> int:
        return 1 if self.problems() else 0

    def as_json(self) -> Json:
        return {
            "url": self.url,
            "at": self.at,
            "exit_status": self.exit_status(),
            "problems": self.problems(),
            "health": self.health,
            "ready": self.ready,
            "status": self.status,
            "sessions": self.sessions,
            "bandwidth": self.bandwidth,
            "parked": self.parked,
            "parked_error": self.parked_error,
        }


@dataclass
class ParkedCache:
    """The parked list `--watch` drew last: for how many parked files, and when it was asked."""

    count: int = -1
    asked: float = 0.0
    files: list[Json] = field(default_factory=list[Json])

    def fresh(self, count: int, now: float) -> bool:
        return count == self.count and now - self.asked < PARKED_EVERY_S


def snapshot(
    client: Client,
    parked_cache: ParkedCache | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Snapshot:
    """Ask the API. The parked list is read from NFS by the service: asked only when there are
    parked files, and (with `parked_cache`) only when their count changed or the list drawn is
    PARKED_EVERY_S old."""
    health = client.get("/healthz", ok=(200, 503))
    ready = client.get("/readyz", ok=(200, 503))
    status = client.get("/v1/status")
    sessions = client.get(f"/v1/sessions?ended={ENDED_SHOWN}").get("sessions", [])
    bandwidth = client.get("/v1/bandwidth", ok=(200, 503))
    count = int(status.get("failed", 0))
    parked: list[Json] = []
    error: str | None = None
    if count:
        now = clock()
        if parked_cache is not None and parked_cache.fresh(count, now):
            parked = parked_cache.files
        else:
            parked, error = _parked(client)
            if parked_cache is not None and error is None:
                parked_cache.count, parked_cache.asked, parked_cache.files = count, now, parked
    return Snapshot(client.url, health, ready, status, sessions, bandwidth, parked, error)


def _parked(client: Client) -> tuple[list[Json], str | None]:
    """The first parked files, or why they could not be listed (the service answered the rest:
    only this read waits for NFS)."""
    path = f"/v1/files/failed?limit={PARKED_SHOWN}"
    try:
        answer = client.get(path, ok=(200, 503), timeout=PARKED_TIMEOUT_S)
    except Unreachable as exc:
        return [], f"{exc} (waited {PARKED_TIMEOUT_S:.0f} s: the list is read from NFS)"
    if "files" not in answer:
        return [], str(answer.get("detail") or "no list in the answer")
    return answer["files"], None


# --- drawing -------------------------------------------------------------------------------


def human(n: float | None) -> str:
    if n is None:
        return "?"
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.0f} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def per_second(n: float | None) -> str:
    return f"{human(n)}/s" if n else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """[#####.....]  50 %"""
    if total <= 0:
        return "[" + "." * width + "]    "
    part = min(1.0, done / total)
    filled = int(part * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {int(part * 100):3d} %"


def cut(text: object, width: int) -> str:
    """Printable, and at most `width` characters (the end kept: a path's file name)."""
    s = printable(str(text))
    return s if len(s) <= width else "..." + s[-(width - 3) :] if width > 3 else s[:width]


def fit(line: str, width: int) -> str:
    """A whole line at most `width` characters (its end cut)."""
    return line if len(line) <= width else line[: max(0, width - 3)] + "..."


def _table(rows: list[list[str]], widths: list[int]) -> list[str]:
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _sessions(snap: Snapshot, width: int) -> list[str]:
    watched = [s for s in snap.sessions if s.get("state") in ("active", "draining")]
    ended = sorted(
        (s for s in snap.sessions if s.get("state") not in ("active", "draining")),
        key=lambda s: s.get("stopped_at") or s.get("started_at") or 0,
        reverse=True,
    )[:ENDED_SHOWN]
    shown = watched + ended
    longest = max((len(printable(str(s.get("session_name", "")))) for s in shown), default=0)
    name_w = max(7, min(32, longest, width - 100))
    rows = [["SESSION", "STATE", "PROGRESS", "DONE / TOTAL", "RATE", "ETA", "FILES"]]
    for s in shown:
        done, left = int(s.get("bytes_done", 0)), int(s.get("bytes_remaining", 0))
        total = done + left
        drained = s.get("state") == "drained"
        files = (
            f"{s.get('uploaded', 0)} up, {s.get('waiting', 0)} waiting, "
            f"{s.get('in_flight', 0)} in flight, {s.get('retrying', 0)} retrying, "
            f"{s.get('failed', 0)} parked"
        )
        rows.append(
            [
                cut(s.get("session_name", "?"), name_w),
                cut(s.get("state", "?"), 8 if s.get("state") != "drain_timed_out" else 15),
                bar(1, 1) if drained and total == 0 else bar(done, total),
                f"{human(done)} / {human(total)}",
                per_second(s.get("rate_bytes_per_second")),
                "done" if drained else duration(s.get("eta_seconds")),
                files,
            ]
        )
    if len(rows) == 1:
        return ["No session yet (POST /v1/watch/start starts one)."]
    return _table(rows, [name_w, 8, BAR_WIDTH + 7, 21, 12, 10, 0])


def _step(f: Json) -> str:
    if f.get("state") == "retrying":
        return f"retrying #{f.get('attempt')} in {duration(f.get('next_attempt_in_s'))}"
    attempt = f.get("attempt", 1)
    return f"{f.get('state')}" + (f" #{attempt}" if attempt and attempt > 1 else "")


def _files(snap: Snapshot, width: int) -> list[str]:
    files: list[Json] = snap.status.get("files_in_flight", [])
    total = snap.status.get("files_in_flight_total", len(files))
    lines = [f"FILES IN FLIGHT ({total})"]
    if not files:
        return [*lines, "Nothing in flight."]
    longest = max((len(printable(str(f.get("path", "")))) for f in files), default=0)
    path_w = max(4, min(60, longest, width - 100))
    session_w = max(7, min(16, max(len(printable(str(f.get("session_name", "")))) for f in files)))
    rows = [["SESSION", "FILE", "STEP", "PROGRESS", "SENT / SIZE", "RATE"]]
    for f in files:
        size = f.get("size")
        sent = int(f.get("bytes_sent", 0))
        rows.append(
            [
                cut(f.get("session_name", "?"), session_w),
                cut(f.get("path", "?"), path_w),
                cut(_step(f), 24),
                bar(sent, int(size)) if size is not None else "",
                f"{human(sent)} / {human(size)}",
                per_second(f.get("rate_bytes_per_second")),
            ]
        )
    lines += _table(rows, [session_w, path_w, 12, BAR_WIDTH + 7, 21, 0])
    if total > len(files):
        lines.append(f"... and {total - len(files)} more")
    for f in files:
        if f.get("state") == "retrying" and f.get("last_error"):
            lines.append(cut(f"  {f.get('path')}: {f.get('last_error')}", width))
    return lines


def render(snap: Snapshot, width: int = 120) -> list[str]:
    """The picture, one string a line, each printable and at most `width` long."""
    status, bw = snap.status, snap.bandwidth
    health = "healthy" if snap.health.get("ok") else "UNHEALTHY"
    ready = "ready" if snap.ready.get("ready") else "NOT READY"
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.at))
    limit = bw.get("limit", "?")
    source = bw.get("source", "?")
    lines = [
        f"nfs-watcher-uploader at {snap.url}   {health} | {ready} | {stamp}",
        f"Uplink {per_second(bw.get('rate_bytes_per_second'))}   limit "
        f"{'none' if limit == 'off' else f'{limit}/s'} ({source})   "
        f"uploaded {status.get('processed_ok', 0)}, parked {status.get('failed', 0)}, "
        f"retrying {status.get('retrying', 0)}, queued {status.get('queue_depth', 0)}",
        "",
        *_sessions(snap, width),
        "",
        *_files(snap, width),
    ]
    if snap.parked:
        lines += ["", f"PARKED ({status.get('failed', len(snap.parked))})"]
        for p in snap.parked[:PARKED_SHOWN]:
            lines.append(f"  {p.get('session_name')}/{p.get('filename')}: {p.get('reason')}")
        if (more := status.get("failed", 0) - len(snap.parked)) > 0:
            lines.append(f"  ... and {more} more (GET /v1/files/failed)")
    if problems := snap.problems():
        lines += ["", "NEEDS A LOOK: " + "; ".join(problems)]
    return [fit(printable(line), width) for line in lines]


# --- running -------------------------------------------------------------------------------


def _draw(out: TextIO, lines: list[str], rows: int) -> None:
    """Draw over the previous frame: home, each line cleared to its end, the rest cleared."""
    shown = lines[: max(1, rows - 1)]
    out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in shown) + CLEAR_BELOW)
    out.flush()


def watch(
    client: Client,
    args: argparse.Namespace,
    out: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Draw until interrupted; the exit status is the last picture's."""
    code = 2
    cache = ParkedCache()
    if not args.json:
        out.write(HIDE_CURSOR + CLEAR_ALL)
    try:
        while True:
            size = shutil.get_terminal_size()
            try:
                snap = snapshot(client, cache, clock)
                code = snap.exit_status()
                if args.json:
                    out.write(json.dumps(snap.as_json()) + "\n")
                    out.flush()
                else:
                    _draw(out, render(snap, size.columns), size.lines)
            except Unreachable as exc:
                code = 2
                if args.json:
                    out.write(json.dumps({"url": client.url, "exit_status": 2, "error": str(exc)}))
                    out.write("\n")
                    out.flush()
                else:
                    stamp = time.strftime("%H:%M:%S")
                    _draw(out, [cut(f"{stamp} {exc}; trying again", size.columns)], size.lines)
            sleep(max(0.1, args.interval))
    except KeyboardInterrupt:
        return code
    finally:
        if not args.json:
            out.write(SHOW_CURSOR)
            out.flush()


def _stdout() -> TextIO:
    out: TextIO = sys.stdout
    if isinstance(sys.stdout, io.TextIOWrapper):  # a terminal that is not UTF-8 gets every name
        sys.stdout.reconfigure(errors="backslashreplace")  # pyright: ignore[reportUnknownMemberType]
    return out


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or _stdout()
    try:
        client = Client(args.url, read_token(args.token_file, dict(os.environ)))
        if args.watch:
            return watch(client, args, out)
        snap = snapshot(client)
    except Unreachable as exc:
        if args.json:
            out.write(json.dumps({"url": args.url, "exit_status": 2, "error": str(exc)}) + "\n")
        else:
            print(f"nfs-watcher-uploader status: {printable(str(exc))}", file=sys.stderr)
        return 2
    if args.json:
        out.write(json.dumps(snap.as_json(), indent=1) + "\n")
    else:
        # Into a pipe or a file, lines are not cut to a terminal's width.
        width = shutil.get_terminal_size().columns if out.isatty() else UNCUT_WIDTH
        out.write("\n".join(render(snap, width)) + "\n")
    return snap.exit_status()
