"""Every bad input answers 4xx with a message, creates nothing, and leaves the service healthy."""

import os
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings

from .helpers import RunningService, serve


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, azurite: Any) -> Any:
    from .helpers import make_settings

    root = tmp_path_factory.mktemp("api")
    running = serve(make_settings(root, azurite, "apitests"))
    yield running
    running.stop()


def _created(settings: Settings) -> list[str]:
    return (
        sorted(os.listdir(settings.nfs_incoming_dir)) if settings.nfs_incoming_dir.exists() else []
    )


BAD_NAMES = [
    (".", "must not be '.'"),
    ("..", "must not be '..'"),
    ("a" * 129, "129 characters long; the limit is 128"),
    ("a" * 1000, "1000 characters long; the limit is 128"),
    ("a/b", "may contain only"),
    ("../etc", "may contain only"),
    ("with space", "may contain only"),
    ("", "may contain only"),
    ("nul\x00byte", "may contain only"),
    ("ünï", "may contain only"),
]


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_bad_session_names_are_refused(api: RunningService, name: str, message: str) -> None:
    r = api.post("/v1/watch/start", json={"session_name": name})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert "session_name" in r.json()["detail"]
    assert _created(api.settings) == []
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {"session_name": 123}}, "session_name"),
        ({"json": {"session_name": ["x"]}}, "session_name"),
        ({"json": ["x"]}, "body"),
        ({"json": "x"}, "body"),
        ({"json": {"session": "typo"}}, "session: Extra inputs are not permitted"),
        (
            {"content": b"not json", "headers": {"content-type": "application/json"}},
            "JSON",
        ),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, "JSON"),
    ],
)
def test_malformed_bodies_are_refused(
    api: RunningService, kwargs: dict[str, Any], message: str
) -> None:
    r = api.post("/v1/watch/start", **kwargs)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert "Traceback" not in r.text
    assert _created(api.settings) == []


def test_start_twice_conflicts_and_stop_is_idempotent(api: RunningService) -> None:
    assert api.post("/v1/watch/start", json={"session_name": "twice"}).status_code == 200
    r = api.post("/v1/watch/start", json={"session_name": "other"})
    assert r.status_code == 409
    assert "'twice' is already active" in r.json()["detail"]
    assert not (api.settings.nfs_incoming_dir / "other").exists()
    assert api.post("/v1/watch/stop").json()["session_name"] == "twice"
    again = api.post("/v1/watch/stop")
    assert again.status_code == 200 and again.json()["session_name"] is None


def test_generated_session_name(api: RunningService) -> None:
    r = api.post("/v1/watch/start")
    assert r.status_code == 200, r.text
    name = r.json()["session_name"]
    assert name.startswith("00-session-")
    assert (api.settings.nfs_incoming_dir / name).is_dir()
    assert api.post("/v1/watch/stop").status_code == 200


def test_unknown_and_invalid_session_lookups(api: RunningService) -> None:
    r = api.get("/v1/sessions/never-started")
    assert r.status_code == 404 and "never-started" in r.json()["detail"]
    r = api.get("/v1/sessions/..")
    assert r.status_code in (404, 422)
    r = api.get("/v1/sessions/" + "a" * 300)
    assert r.status_code == 422 and "limit is 128" in r.json()["detail"]


def test_retry_with_bad_body(api: RunningService) -> None:
    r = api.post("/v1/files/retry", json={"session_name": ".."})
    assert r.status_code == 422
    assert api.post("/v1/files/retry").json() == {"requeued": 0}


def test_nfs_error_on_start_is_503_and_changes_nothing(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    settings.nfs_incoming_dir.mkdir(parents=True, exist_ok=True)
    (settings.nfs_incoming_dir / "blocked").write_bytes(b"a file where a folder should go")
    r = running.post("/v1/watch/start", json={"session_name": "blocked"})
    assert r.status_code == 503, r.text
    assert "nothing was changed" in r.json()["detail"]
    assert running.get("/v1/status").json()["active_session"] is None
    assert running.post("/v1/watch/start", json={"session_name": "fine"}).status_code == 200


def test_probes_and_status(api: RunningService) -> None:
    assert api.get("/healthz").json() == {"ok": True, "detail": None}
    assert api.get("/readyz").json() == {"ready": True, "detail": None}
    status = api.get("/v1/status").json()
    for key in (
        "enabled",
        "active_session",
        "processed_ok",
        "processed_err",
        "last_error",
        "queue_depth",
        "in_flight",
        "retrying",
        "failed",
    ):
        assert key in status
