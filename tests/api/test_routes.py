"""Bad input gets a 4xx naming the problem and changes nothing; no request answers 500."""

import os
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import (
    RunningService,
    make_settings,
    parked_files,
    serve,
    wait_for,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, azurite: Any) -> Any:

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


@pytest.mark.adversarial
def test_a_file_name_that_is_not_utf8_never_answers_500(
    service_factory: Any, settings_factory: Any
) -> None:
    """Finding adversary-5 (first adversarial review, issue 10)."""
    settings = settings_factory()
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "bytes"})
    folder = os.fsencode(settings.nfs_incoming_dir / "bytes")
    with open(os.path.join(folder, b"bad\xff\n.bin"), "wb") as f:
        f.write(b"x")
    wait_for(lambda: parked_files(running), what="the file parked")
    for path in ("/v1/status", "/v1/sessions", "/v1/sessions/bytes", "/v1/files/failed"):
        r = running.get(path)
        assert r.status_code == 200, (path, r.text)
    (parked,) = parked_files(running)
    assert parked["filename"] == "bad\\xff\\n.bin"
    assert "not valid UTF-8" in parked["reason"]
    assert "bad\\xff" in running.get("/v1/status").json()["last_error"]
    running.stop()
    again = service_factory(settings)
    r = again.get("/v1/files/failed")
    assert r.status_code == 200 and r.json()["files"][0]["filename"] == "bad\\xff\\n.bin"


@pytest.mark.adversarial
@pytest.mark.parametrize(
    "limit", ["9" * 400, int("9" * 400), "9" * 310 + "T"], ids=["string", "integer", "with-unit"]
)
def test_an_absurdly_large_bandwidth_override_is_a_422_not_a_500(
    service_factory: Any, settings_factory: Any, limit: str | int
) -> None:
    """parse_rate does int(float(...)): a number of more than ~309 digits is float('inf'), and
    int(inf) raises OverflowError, which pydantic does not turn into a validation error.

    Finding attack2-1 (attack review of issues 12 to 16).
    """
    running = service_factory(settings_factory(bandwidth_limit=3 * MIB))
    before = running.get("/v1/bandwidth").json()
    r = running.client.put("/v1/bandwidth", json={"limit": limit})
    assert r.status_code == 422, r.text
    assert "limit" in r.json()["detail"]
    assert running.get("/v1/bandwidth").json() == before
    assert not (running.settings.nfs_processing_root / "bandwidth.json").exists()


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_bad_session_names_are_refused_naming_the_rule(
    api: RunningService, name: str, message: str
) -> None:
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
def test_malformed_bodies_are_refused_naming_the_problem(
    api: RunningService, kwargs: dict[str, Any], message: str
) -> None:
    r = api.post("/v1/watch/start", **kwargs)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert "Traceback" not in r.text
    assert _created(api.settings) == []


def test_a_second_start_conflicts_and_a_second_stop_changes_nothing(api: RunningService) -> None:
    assert api.post("/v1/watch/start", json={"session_name": "twice"}).status_code == 200
    r = api.post("/v1/watch/start", json={"session_name": "other"})
    assert r.status_code == 409
    assert "'twice' is already active" in r.json()["detail"]
    assert not (api.settings.nfs_incoming_dir / "other").exists()
    assert api.post("/v1/watch/stop").json()["session_name"] == "twice"
    again = api.post("/v1/watch/stop")
    assert again.status_code == 200 and again.json()["session_name"] is None


def test_a_start_without_a_name_generates_one_and_creates_its_folder(api: RunningService) -> None:
    r = api.post("/v1/watch/start")
    assert r.status_code == 200, r.text
    name = r.json()["session_name"]
    assert name.startswith("00-session-")
    assert (api.settings.nfs_incoming_dir / name).is_dir()
    assert api.post("/v1/watch/stop").status_code == 200


def test_an_unknown_session_is_404_and_an_invalid_name_422(api: RunningService) -> None:
    r = api.get("/v1/sessions/never-started")
    assert r.status_code == 404 and "never-started" in r.json()["detail"]
    r = api.get("/v1/sessions/..")
    assert r.status_code in (404, 422)
    r = api.get("/v1/sessions/" + "a" * 300)
    assert r.status_code == 422 and "limit is 128" in r.json()["detail"]


def test_a_retry_with_a_bad_body_is_422_and_without_one_requeues_nothing(
    api: RunningService,
) -> None:
    r = api.post("/v1/files/retry", json={"session_name": ".."})
    assert r.status_code == 422
    assert api.post("/v1/files/retry").json() == {"requeued": 0}


def test_an_nfs_error_on_start_is_503_and_changes_nothing(
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


def test_probes_answer_ok_and_status_reports_every_field(api: RunningService) -> None:
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


def test_bad_bandwidth_requests_answer_422_and_change_nothing(
    service_factory: Any, settings_factory: Any
) -> None:
    running = service_factory(settings_factory(bandwidth_limit=3 * MIB))
    before = running.get("/v1/bandwidth").json()
    for body, message in [
        ({"limit": "12Q"}, "limit: '12Q' is not a rate"),
        ({"limit": "0"}, "would stop every upload"),
        ({"limit": None}, "limit"),
        ({"rate": "1M"}, "limit"),
        ({"limit": "1M", "extra": 1}, "extra"),
    ]:
        r = running.client.put("/v1/bandwidth", json=body)
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"], r.text
    assert running.get("/v1/bandwidth").json() == before
    assert before["limit"] == "3M" and before["source"] == "setting"
    assert not (running.settings.nfs_processing_root / "bandwidth.json").exists()
    r = running.client.put("/v1/bandwidth", json={"limit": 1048576})
    assert r.status_code == 200 and r.json()["limit"] == "1M"
    metrics = running.get("/metrics").text.splitlines()
    (line,) = [m for m in metrics if m.startswith("upload_bandwidth_limit_bytes_per_second")]
    assert float(line.split()[-1]) == 1048576


def test_a_session_cannot_be_named_like_a_manifest(running: RunningService) -> None:
    r = running.post("/v1/watch/start", json={"session_name": "x.Manifest.json"})
    assert r.status_code == 422
    assert "must not end with '.manifest.json'" in r.json()["detail"]
    assert running.get("/v1/status").json()["active_session"] is None
