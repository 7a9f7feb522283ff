"""The status page in a real browser (Debian's chromium through Playwright) against the real
service and Azurite: an operator signs in, watches a session go from 0 to done, changes the
bandwidth, retries one parked file and dismisses another; hostile file names and reasons show
as text and run nothing; a wrong token gets a clear message; the token never leaves the bearer
header; /docs works offline. Every test fails on any dialog or console error (a CSP violation
is one). A screenshot of the page is kept as an artifact in the test's folder (and written to
$STATUS_PAGE_SCREENSHOT too: `make screenshot` refreshes the README's docs/status-page.png)."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from nfs_watcher_uploader.api.headers import PAGE_POLICY
from nfs_watcher_uploader.config import Settings
from tests.support.browser import Watched, new_page
from tests.support.helpers import (
    Azurite,
    RunningService,
    blob_bytes,
    parked_files,
    put_blob,
    session_view,
    wait_for,
    write_file,
)

TOKEN = "page-token-0123456789abcdef"
KIB, MIB = 1024, 1024 * 1024


def _open(browser: Any, running: RunningService, token: str | None = TOKEN) -> Watched:
    watched = new_page(browser)
    watched.page.goto(running.base_url + "/")
    if token is not None:
        watched.page.fill("#token", token)
        watched.page.click("#sign-in button[type=submit]")
        watched.page.wait_for_selector("#main", state="visible", timeout=15000)
    return watched


def _clean(watched: Watched) -> None:
    assert watched.dialogs == [], f"a dialog opened: {watched.dialogs}"
    assert watched.errors == [], f"console errors: {watched.errors}"


def _text(watched: Watched, selector: str) -> str:
    return watched.page.inner_text(selector)


def _until[T](condition: Callable[[], T], what: str, timeout: float = 30) -> T:
    return wait_for(condition, timeout=timeout, interval=0.1, what=what)


def _session_bar(watched: Watched, name: str) -> list[float] | None:
    """The value and max of the session's progress bar on the page (None: no row yet)."""
    return watched.page.evaluate(
        """name => {
            const row = [...document.querySelectorAll('#sessions-body tr')]
                .find(r => r.dataset.session === name);
            const bar = row && row.querySelector('progress');
            return bar ? [bar.value, bar.max] : null;
        }""",
        name,
    )


def _start(running: RunningService, name: str) -> str:
    answer = running.post("/v1/watch/start", json={"session_name": name})
    assert answer.status_code == 200, answer.text
    return answer.json()["date_prefix"]


def _screenshot(watched: Watched, tmp_path: Path) -> Path:
    shot = tmp_path / "status-page.png"
    watched.page.screenshot(path=str(shot), full_page=True)
    if target := os.environ.get("STATUS_PAGE_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot


def test_an_operator_signs_in_and_sees_a_session_go_from_0_to_done(
    service_factory: Any, settings_factory: Any, azurite: Azurite, browser: Any, tmp_path: Path
) -> None:
    """Files land in Azurite under a 2 MiB/s cap while the page shows the session's bar rising
    from 0 to done and the files in flight with their own progress; a screenshot mid-way."""
    settings: Settings = settings_factory(api_token=TOKEN, bandwidth_limit=2 * MIB)
    running = service_factory(settings)
    watched = _open(browser, running)
    date = _start(running, "rec-2026")
    _until(lambda: _session_bar(watched, "rec-2026") is not None, "the session's row")
    assert _session_bar(watched, "rec-2026") == [0, 1]  # nothing yet
    incoming = settings.nfs_incoming_dir / "rec-2026"
    files = {f"cam{i}/take-{i:02d}.bin": os.urandom(6 * MIB) for i in range(1, 4)}
    for rel, data in files.items():
        write_file(incoming / rel, data)
    write_file(incoming / "notes-ending-in-a-dot.", b"Azure refuses this name")

    seen: list[float] = []

    def midway() -> bool:
        bar = _session_bar(watched, "rec-2026")
        if bar and bar[1] > 1:
            seen.append(bar[0] / bar[1])
        points = watched.page.get_attribute("#spark-line", "points") or ""
        return (
            any(0.2 < s < 0.9 for s in seen)
            and "take-" in _text(watched, "#files-body")
            and len(points.split()) >= 5  # the sparkline has a few seconds to show
        )

    _until(midway, "the session's bar part way, with files in flight")
    assert " of 6.00 MiB" in _text(watched, "#files-body")
    _until(lambda: "notes-ending-in-a-dot." in _text(watched, "#parked-body"), "the parked file")
    shot = _screenshot(watched, tmp_path)
    assert shot.stat().st_size > 10_000

    _until(lambda: session_view(running, "rec-2026")["uploaded"] == 3, "all three up", 60)
    container = azurite.container(settings.azure_container)
    for rel, data in files.items():
        assert blob_bytes(container, f"{date}/rec-2026/{rel}") == data
    running.service.sessions.by_name["rec-2026"].parked.clear()  # let it drain
    running.post("/v1/watch/stop")
    _until(lambda: "drained" in _text(watched, "#sessions-body"), "drained on the page", 60)
    bar = _session_bar(watched, "rec-2026")
    assert bar is not None and bar[0] == bar[1]
    assert "100 %" in _text(watched, "#sessions-body") and "done" in _text(
        watched, "#sessions-body"
    )
    assert "Nothing in flight." in _text(watched, "#files-body")
    assert any(0.0 < s < 1.0 for s in seen) and seen[0] < seen[-1]
    _clean(watched)


def test_the_bandwidth_control_changes_the_limit_in_force(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """Typed into the page: the override is in force at once (the bucket's rate), a file being
    sent slows to it, and clearing it brings the setting back; a bad rate says what is wrong."""
    settings: Settings = settings_factory(api_token=TOKEN, bandwidth_limit=8 * MIB)
    running = service_factory(settings)
    watched = _open(browser, running)
    _until(lambda: "8M/s" in _text(watched, "#limit"), "the setting's limit shown")
    _start(running, "bw")
    write_file(settings.nfs_incoming_dir / "bw" / "big.bin", os.urandom(40 * MIB))

    watched.page.fill("#bandwidth-limit", "12Q")
    watched.page.click("#bandwidth button[type=submit]")
    _until(lambda: "is not a rate" in _text(watched, "#message"), "a bad rate refused")
    assert running.service.bandwidth.bucket.rate == 8 * MIB

    watched.page.fill("#bandwidth-limit", "512K")
    watched.page.click("#bandwidth button[type=submit]")
    _until(lambda: "512K/s" in _text(watched, "#limit"), "the override shown")
    assert "override" in _text(watched, "#limit-source")
    assert running.service.bandwidth.bucket.rate == 512 * KIB
    assert running.get("/v1/bandwidth").json()["source"] == "override"

    def file_rate() -> float:
        files = running.get("/v1/status").json()["files_in_flight"]
        return files[0]["rate_bytes_per_second"] if files else -1.0

    # The file's rate over the last seconds falls to the new cap.
    _until(lambda: 0 < file_rate() <= 1.2 * 512 * KIB, "the file slowed to 512 KiB/s", 40)

    watched.page.click("#bandwidth-clear")
    _until(lambda: "8M/s" in _text(watched, "#limit"), "the setting back")
    assert "setting" in _text(watched, "#limit-source")
    assert running.service.bandwidth.bucket.rate == 8 * MIB
    # The message said what was wrong; the console has no error of the page's own.
    watched.errors = [e for e in watched.errors if "422" not in e]
    _clean(watched)


def test_a_parked_file_is_retried_and_another_dismissed_from_the_page(
    service_factory: Any, settings_factory: Any, azurite: Azurite, browser: Any
) -> None:
    """conflict.bin is parked because its name holds other bytes (APP_ON_NAME_CONFLICT=park);
    once that blob is gone, Retry on its row uploads it. Dismiss (clicked twice) on the other
    row removes that file from the parked folder and counts it as dismissed."""
    settings: Settings = settings_factory(api_token=TOKEN, on_name_conflict="park")
    running = service_factory(settings)
    date = _start(running, "pk")
    container = azurite.container(settings.azure_container)
    put_blob(container, f"{date}/pk/conflict.bin", b"somebody else's bytes")
    incoming = settings.nfs_incoming_dir / "pk"
    write_file(incoming / "conflict.bin", b"the recording")
    write_file(incoming / "bad.", b"no blob can have this name")
    _until(lambda: session_view(running, "pk")["failed"] == 2, "both parked")

    watched = _open(browser, running)
    _until(lambda: "conflict.bin" in _text(watched, "#parked-body"), "the parked rows")
    assert "APP_ON_NAME_CONFLICT=park" in _text(watched, "#parked-body")
    container.delete_blob(f"{date}/pk/conflict.bin")

    watched.page.locator("#parked-body tr", has_text="conflict.bin").get_by_role(
        "button", name="Retry"
    ).click()
    _until(lambda: "Requeued 1 file(s)" in _text(watched, "#message"), "the retry said")
    _until(lambda: session_view(running, "pk")["uploaded"] == 1, "conflict.bin uploaded")
    assert blob_bytes(container, f"{date}/pk/conflict.bin") == b"the recording"
    _until(lambda: "conflict.bin" not in _text(watched, "#parked-body"), "its row gone")

    row = watched.page.locator("#parked-body tr", has_text="bad.")
    row.get_by_role("button", name="Dismiss").click()
    assert parked_files(running) != []  # one click only arms it
    row.get_by_role("button", name="Really dismiss?").click()
    _until(lambda: "Dismissed bad." in _text(watched, "#message"), "the dismissal said")
    assert parked_files(running) == []
    assert session_view(running, "pk")["dismissed"] == 1
    assert not (settings.nfs_processing_root / "_failed" / date / "pk" / "bad.").exists()
    _until(lambda: "No parked files." in _text(watched, "#parked-body"), "the list empty")
    _clean(watched)


# Names a writer of the share may choose. `<script>alert(1)</script>.bin` is a folder
# `<script>alert(1)<` holding `script>.bin`; the ones ending in '.' are parked (Azure refuses
# them), so their names and reasons show in the parked list; the others go up.
HOSTILE_UPLOADED = [
    "<script>alert(1)</script>.bin",
    '"onmouseover=alert(2) x=".bin',
    "<img src=x onerror=alert(3)>.bin",
]
HOSTILE_PARKED = [
    b"<img src=x onerror=alert(4)>.",
    b"ctl-\x1b[31m-\x07-\r-\x7f.",
    b"not-utf8-\xff\xfe-<b>x<b>.",
]


def test_hostile_names_and_reasons_show_as_text_and_run_nothing(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """Names with markup, attribute breakers, control characters and bytes that are not UTF-8,
    and a reason file rewritten on the share to hold markup (the next process reads it): each
    shows as text (the DOM holds no element they would make), no dialog opens, no console error
    (no CSP violation)."""
    settings: Settings = settings_factory(api_token=TOKEN, bandwidth_limit=256 * KIB)
    running = service_factory(settings)
    date = _start(running, "evil")
    incoming = settings.nfs_incoming_dir / "evil"
    for name in HOSTILE_PARKED:
        with open(os.path.join(os.fsencode(incoming), name), "wb") as f:
            f.write(b"x")
    _until(lambda: session_view(running, "evil")["failed"] == 3, "the hostile names parked")
    reason = settings.nfs_processing_root / "_failed_reasons" / date / "evil" / "bad-reason."
    write_file(incoming / "bad-reason.", b"x")
    _until(lambda: reason.exists(), "a reason file on the share")
    reason.write_text(
        json.dumps(
            {
                "reason": "<img src=x onerror=alert(5)><script>alert(6)</script>",
                "rel": "bad-reason.",
            }
        )
    )
    running.stop()  # a process reads a reason file once: the next one reads the rewritten one
    running = service_factory(settings)
    for rel in HOSTILE_UPLOADED:
        write_file(incoming / rel, os.urandom(512 * KIB))

    watched = _open(browser, running)
    _until(lambda: "onerror=alert(5)" in _text(watched, "#parked-body"), "the rewritten reason")
    parked = _text(watched, "#parked-body")
    assert "<img src=x onerror=alert(4)>." in parked
    assert "ctl-\\x1b[31m-\\x07-\\r-\\x7f." in parked
    assert "not-utf8-\\xff\\xfe-<b>x<b>." in parked
    assert "<img src=x onerror=alert(5)><script>alert(6)</script>" in parked

    shown: set[str] = set()

    def all_in_flight_seen() -> bool:
        text = _text(watched, "#files-body")
        shown.update(rel for rel in HOSTILE_UPLOADED if rel in text)
        return len(shown) == len(HOSTILE_UPLOADED)

    _until(all_in_flight_seen, "each uploading name on the page", 60)
    # Every cell gets a mouseover, at once: the rows are redrawn each second and files leave
    # the list as they finish, so hovering them one by one could wait on a row that is gone.
    hovered = watched.page.evaluate(
        """() => {
            const cells = document.querySelectorAll('#files-body td, #parked-body td');
            cells.forEach(c => c.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})));
            return cells.length;
        }"""
    )
    assert hovered > 0
    counts = watched.page.evaluate(
        """() => ({
            img: document.querySelectorAll('img').length,
            b: document.querySelectorAll('b').length,
            scripts: [...document.scripts].map(s => s.src),
            handlers: [...document.querySelectorAll('*')]
                .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
        })"""
    )
    assert counts["img"] == 0 and counts["b"] == 0 and counts["handlers"] == 0, counts
    assert [urlsplit(s).path for s in counts["scripts"]] == ["/static/status.js"]
    _clean(watched)


def test_a_wrong_token_gets_a_clear_message_and_the_token_stays_in_the_header(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """A wrong token: the page says the API refused it and how to find the right one, and asks
    again. The right one: sent only as a bearer header to this origin, never in a URL, a
    Referer or a cookie; kept in the tab's sessionStorage and forgotten on sign-out. The page
    itself loads without a token and carries the strict CSP."""
    settings: Settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    watched = new_page(browser)
    answer = watched.page.goto(running.base_url + "/")
    assert answer.headers["content-security-policy"] == PAGE_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert watched.page.is_visible("#sign-in") and not watched.page.is_visible("#main")

    watched.page.fill("#token", "wrong-token-0123456789")
    watched.page.click("#sign-in button[type=submit]")
    _until(lambda: "refused this token (401" in _text(watched, "#message"), "the refusal")
    assert "APP_API_TOKEN" in _text(watched, "#message")
    assert watched.page.is_visible("#sign-in") and not watched.page.is_visible("#main")
    assert watched.page.evaluate("sessionStorage.length") == 0

    watched.page.fill("#token", TOKEN)
    watched.page.click("#sign-in button[type=submit]")
    watched.page.wait_for_selector("#main", state="visible", timeout=15000)
    stored = watched.page.evaluate("Object.values(sessionStorage)")
    assert stored == [TOKEN]
    _until(lambda: len(watched.requests) > 8, "a few refreshes")
    for url, headers in watched.requests:
        assert TOKEN not in url and "token" not in urlsplit(url).query
        assert not headers.get("referer"), (url, headers)  # no-referrer: none, or empty
        assert urlsplit(url).netloc == urlsplit(running.base_url).netloc
    api = [h for url, h in watched.requests if "/v1/" in url]
    assert api and all(h.get("authorization") == f"Bearer {TOKEN}" for h in api[-3:])
    assert watched.page.context.cookies() == []
    assert TOKEN not in watched.page.url and TOKEN not in watched.page.content()

    watched.page.click("#sign-out")
    assert watched.page.evaluate("sessionStorage.length") == 0
    assert watched.page.is_visible("#sign-in")
    # 401s are the answers the test asked for; nothing else went wrong.
    watched.errors = [e for e in watched.errors if "401" not in e]
    _clean(watched)


def test_the_docs_work_offline_under_their_policy(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """/docs with every request to another host refused: Swagger UI comes from this service,
    lists the API, and nothing breaks its policy."""
    running = service_factory(settings_factory())
    watched = new_page(browser)
    own = urlsplit(running.base_url).netloc
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:
        if urlsplit(route.request.url).netloc == own or route.request.url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    watched.page.route("**/*", only_here)
    answer = watched.page.goto(running.base_url + "/docs")
    assert "style-src 'self' 'unsafe-inline'" in answer.headers["content-security-policy"]
    watched.page.wait_for_selector("[data-path='/v1/status']", timeout=20000)
    assert watched.page.locator("[data-path='/v1/watch/start']").count() >= 1
    assert elsewhere == []
    _clean(watched)


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_page_and_the_docs_cannot_be_framed(
    service_factory: Any, settings_factory: Any, browser: Any, path: str, tmp_path: Path
) -> None:
    """Another site's page that frames them gets nothing drawn (frame-ancestors 'none', DENY)."""
    running = service_factory(settings_factory())
    attacker = tmp_path / "frame.html"
    attacker.write_text(f'<iframe id="f" src="{running.base_url}{path}"></iframe>')
    watched = new_page(browser)
    watched.page.goto(attacker.as_uri())
    _until(lambda: any("frame-ancestors" in e for e in watched.errors), "the browser refusing it")
    # Chromium shows its own error page in the frame instead of ours.
    frame = watched.page.frame_locator("#f")
    assert frame.locator("#sign-in, #main, #swagger-ui").count() == 0


def test_hundreds_of_parked_files_show_a_page_of_them_and_their_count(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """205 parked files: the page reads a page's worth (`?limit=200`, only their reasons read
    from NFS), shows 200 rows, the full count and how many more there are."""
    settings: Settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    _start(running, "many")
    for i in range(205):
        write_file(settings.nfs_incoming_dir / "many" / f"p{i:03d}.", b"x")
    _until(lambda: session_view(running, "many")["failed"] == 205, "205 parked", 120)
    answer = running.get("/v1/files/failed", params={"limit": 10}).json()
    assert len(answer["files"]) == 10 and answer["truncated"] is True
    assert running.get("/v1/files/failed", params={"limit": 0}).status_code == 422
    full = running.get("/v1/files/failed").json()
    assert len(full["files"]) == 205 and full["truncated"] is False

    watched = _open(browser, running)
    _until(lambda: "5 more not shown" in _text(watched, "#parked-more"), "the page's count")
    assert watched.page.locator("#parked-body tr").count() == 200
    assert "(205)" in _text(watched, "#parked-count")
    listings = [url for url, _ in watched.requests if "/v1/files/failed" in url]
    assert listings and all(url.endswith("?limit=200") for url in listings)
    _clean(watched)


def test_a_hung_parked_listing_leaves_the_rest_of_the_page_live(
    service_factory: Any, settings_factory: Any, browser: Any
) -> None:
    """The parked list is the one thing the page reads from NFS. While that read hangs (here
    the browser holds the request), sessions, files and health go on refreshing from memory;
    a listing that fails is said in the parked section, and the service is not called
    unreachable; once it answers again, the list is back."""
    settings: Settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    watched = new_page(browser)
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    watched.page.route("**/v1/files/failed*", hold)
    watched.page.goto(running.base_url + "/")
    watched.page.fill("#token", TOKEN)
    watched.page.click("#sign-in button[type=submit]")
    watched.page.wait_for_selector("#main", state="visible", timeout=15000)
    _until(lambda: held, "the page asking for the parked list")
    _start(running, "live")
    _until(lambda: "live" in _text(watched, "#sessions-body"), "a new session, the list hung")
    assert _text(watched, "#health") == "healthy"

    def refuse(route: Any) -> None:
        route.fulfill(
            status=503,
            content_type="application/json",
            body=json.dumps({"detail": "listing parked files failed: NFS timed out"}),
        )

    watched.page.unroute("**/v1/files/failed*")
    watched.page.route("**/v1/files/failed*", refuse)
    for route in held:
        try:
            refuse(route)
        except Exception:  # the page gave up on it already (its 10 s timeout)
            pass
    _until(
        lambda: (
            "Could not list the parked files: 503 listing parked files failed"
            in _text(watched, "#parked-error")
        ),
        "the parked section saying why",
    )
    assert _text(watched, "#health") == "healthy"
    assert watched.page.is_hidden("#message")

    watched.page.unroute("**/v1/files/failed*")
    _until(lambda: _text(watched, "#parked-error") == "", "the message gone", 20)
    assert "No parked files." in _text(watched, "#parked-body")
    # The 503s are the answers the test gave; nothing else went wrong.
    watched.errors = [e for e in watched.errors if "503" not in e]
    _clean(watched)
