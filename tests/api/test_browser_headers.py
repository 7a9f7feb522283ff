"""What every answer tells a browser (a strict CSP, nosniff, no referrer, no framing; /v1
answers never cached), and that another site's page cannot make the operator's browser change
anything, even with no API token configured. The static route serves its fixed files only."""

from typing import Any

import pytest

from nfs_watcher_uploader.api.headers import DOCS_POLICY, PAGE_POLICY
from tests.support.helpers import RunningService


@pytest.fixture
def open_api(service_factory: Any, settings_factory: Any) -> RunningService:
    """A service with no API token: only the browser checks stand between a page and it."""
    running = service_factory(settings_factory())
    assert running.post("/v1/watch/start", json={"session_name": "s"}).status_code == 200
    return running


@pytest.mark.parametrize(
    "path",
    ["/", "/static/status.js", "/static/status.css", "/healthz", "/v1/status", "/nowhere"],
)
def test_every_answer_carries_the_strict_policy(open_api: RunningService, path: str) -> None:
    answer = open_api.get(path)
    assert answer.headers["content-security-policy"] == PAGE_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"
    if path.startswith("/v1/"):
        assert answer.headers["cache-control"] == "no-store"


def test_the_docs_have_their_own_policy_that_only_allows_inline_styles(
    open_api: RunningService,
) -> None:
    answer = open_api.get("/docs")
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == DOCS_POLICY
    assert "script-src 'self';" in DOCS_POLICY and "unsafe-eval" not in DOCS_POLICY
    assert "cdn" not in answer.text.lower() and "https://" not in answer.text
    assert open_api.get("/static/swagger-ui-bundle.js").status_code == 200
    assert open_api.get("/redoc").status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://attacker.example"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_another_sites_page_cannot_stop_a_session_through_the_browser(
    open_api: RunningService, headers: dict[str, str]
) -> None:
    """A form or fetch from another site (no token needed on an open API) gets 403, and the
    session stays active."""
    answer = open_api.post("/v1/watch/stop", headers=headers)
    assert answer.status_code == 403
    assert "another site" in answer.json()["detail"]
    assert open_api.get("/v1/status").json()["active_session"] == "s"
    assert (
        open_api.client.put("/v1/bandwidth", json={"limit": "1K"}, headers=headers).status_code
        == 403
    )


def test_the_page_itself_and_clients_that_are_not_browsers_still_change_things(
    open_api: RunningService,
) -> None:
    """The page's own requests (same origin) and curl's (no Origin) pass."""
    own = open_api.base_url.removeprefix("http://")
    same = {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}
    assert (
        open_api.client.put("/v1/bandwidth", json={"limit": "1M"}, headers=same).status_code == 200
    )
    assert open_api.client.put("/v1/bandwidth", json={"limit": "2M"}).status_code == 200
    assert open_api.post("/v1/watch/stop").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/status.html",
        "/static/../page.py",
        "/static/%2e%2e/page.py",
        "/static/..%2fpage.py",
        "/static/",
        "/static/STATUS.JS",
    ],
)
def test_the_static_route_serves_its_files_only(open_api: RunningService, path: str) -> None:
    answer = open_api.get(path)
    assert answer.status_code == 404
    assert "import" not in answer.text


def test_the_page_loads_without_the_token_and_shows_only_what_the_probes_tell(
    service_factory: Any, settings_factory: Any
) -> None:
    running = service_factory(settings_factory(api_token="page-token-0123456789"))
    running.post("/v1/watch/start", json={"session_name": "secret-session"})
    answer = running.client.get("/", headers={"Authorization": ""})
    assert answer.status_code == 200
    assert 'data-token-required="true"' in answer.text
    assert "healthy" in answer.text and "ready" in answer.text
    assert "secret-session" not in answer.text
    assert running.client.get("/v1/status", headers={"Authorization": ""}).status_code == 401


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8000", "rebound.localhost", "10.0.0.7.nip.io"]
)
def test_a_page_rebound_to_this_device_cannot_change_things_on_an_open_api(
    open_api: RunningService, host: str
) -> None:
    """DNS rebinding: a page at attacker.example whose name then resolves to this device is
    same-origin to the browser (Sec-Fetch-Site: same-origin, Origin = Host). With no token
    set, such a change is refused (403, saying what to do); the session stays active. Read
    as such, by an IP address or localhost, or by a client that is not a browser, it passes."""
    rebound = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    answer = open_api.post("/v1/watch/stop", headers=rebound)
    assert answer.status_code == 403 and "DNS rebinding" in answer.json()["detail"]
    assert open_api.client.delete("/v1/bandwidth", headers=rebound).status_code == 403
    assert open_api.get("/v1/status").json()["active_session"] == "s"
    assert open_api.client.post("/v1/watch/stop", headers={"Host": host}).status_code == 200
    port = open_api.base_url.rsplit(":", 1)[1]
    for by_address in ("127.0.0.1", "localhost", "[::1]"):
        own = f"{by_address}:{port}"
        same = {"Host": own, "Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}
        answer = open_api.client.put("/v1/bandwidth", json={"limit": "1M"}, headers=same)
        assert answer.status_code == 200, (by_address, answer.text)


def test_with_a_token_a_page_at_a_host_name_changes_things_with_it(
    service_factory: Any, settings_factory: Any
) -> None:
    """With a token set, rebinding gains nothing (the attacker's page has no token), so the
    operator may use the device's name."""
    token = "rebind-token-0123456789abcdef"
    running = service_factory(settings_factory(api_token=token))
    named = {
        "Host": "jetson.local:8000",
        "Origin": "http://jetson.local:8000",
        "Sec-Fetch-Site": "same-origin",
        "Authorization": f"Bearer {token}",
    }
    answer = running.client.put("/v1/bandwidth", json={"limit": "1M"}, headers=named)
    assert answer.status_code == 200, answer.text
