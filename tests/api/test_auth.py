"""Every /v1 route needs the bearer token, checked before the body is read; the probes stay open."""

import asyncio
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from nfs_watcher_uploader.api.auth import ApiToken
from nfs_watcher_uploader.config import Settings
from tests.support.helpers import RunningService, ServiceProcess, wait_for

TOKEN = "t0k3n-for-the-tests-" + "a" * 24


WRONG = "t0k3n-for-the-tests-" + "b" * 24


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _v1_requests(running: RunningService) -> list[tuple[str, str]]:
    """(method, path) of every /v1 route in the app's OpenAPI document, path parameters filled
    in: a route added later is covered without touching this test."""
    out: list[tuple[str, str]] = []
    for route, operations in running.get("/openapi.json").json()["paths"].items():
        if route.startswith("/v1"):
            path = route.replace("{name}", "some-session").replace("{session_name}", "some-session")
            path = path.replace("{parked_as}", "some/file.bin")
            assert "{" not in path, f"fill in the parameters of {route}"
            out.extend((method.upper(), path) for method in sorted(operations))
    return out


@pytest.fixture
def guarded(
    service_factory: Callable[..., RunningService], settings_factory: Callable[..., Settings]
) -> RunningService:
    return service_factory(settings_factory(api_token=TOKEN))


def _publish(folder: Path, version: int, token: str) -> None:
    """Update a Secret the way the kubelet does: a new folder, then `..data` swapped to it in one
    rename; the key itself is a link through `..data`."""
    target = folder / f"..v{version}"
    target.mkdir()
    (target / "api-token").write_text(token + "\n")
    link = folder / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, folder / "..data")
    if not (folder / "api-token").is_symlink():
        (folder / "api-token").symlink_to("..data/api-token")


def test_every_v1_route_needs_the_token(guarded: RunningService) -> None:
    requests = _v1_requests(guarded)
    assert len(requests) >= 7
    anonymous = httpx.Client(base_url=guarded.base_url, timeout=10)
    for method, path in requests:
        for headers, challenge in (
            ({}, "Bearer"),
            (_bearer(WRONG), 'Bearer error="invalid_token"'),
            ({"Authorization": f"Basic {TOKEN}"}, "Bearer"),
            ({"Authorization": "Bearer"}, "Bearer"),
        ):
            r = anonymous.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == challenge
            assert "token" in r.json()["detail"]
            assert TOKEN not in r.text and WRONG not in r.text
    # Nothing was changed by any of them.
    status = guarded.get("/v1/status").json()
    assert status["active_session"] is None and status["processed_ok"] == 0
    assert not guarded.settings.nfs_incoming_dir.exists() or not any(
        guarded.settings.nfs_incoming_dir.iterdir()
    )
    # The right token works everywhere (the scheme's name is case-insensitive).
    for method, path in requests:
        r = guarded.client.request(method, path)
        assert r.status_code < 500 and r.status_code not in (401, 403), (method, path, r.text)
    r = anonymous.post(
        "/v1/watch/start",
        json={"session_name": "lower"},
        headers={"Authorization": f"bearer {TOKEN}"},
    )
    assert r.status_code == 200, r.text
    anonymous.close()


def test_a_request_without_the_token_is_refused_before_its_body_is_read(
    guarded: RunningService,
) -> None:
    anonymous = httpx.Client(base_url=guarded.base_url, timeout=10)
    bad_json = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    assert anonymous.post("/v1/watch/start", **bad_json).status_code == 401
    assert guarded.post("/v1/watch/start", **bad_json).status_code == 422
    assert anonymous.get("/v1/no-such-route").status_code == 401
    assert guarded.get("/v1/no-such-route").status_code == 404
    anonymous.close()


def test_probes_and_metrics_stay_open(guarded: RunningService) -> None:
    anonymous = httpx.Client(base_url=guarded.base_url, timeout=10)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/metrics").status_code == 200
    anonymous.close()


def test_openapi_shows_the_bearer_scheme(guarded: RunningService) -> None:
    doc = guarded.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    ((name, scheme),) = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            secured = operation.get("security") == [{name: []}]
            assert secured == path.startswith("/v1"), path


def test_metrics_need_the_token_when_asked(
    service_factory: Callable[..., RunningService], settings_factory: Callable[..., Settings]
) -> None:
    running = service_factory(settings_factory(api_token=TOKEN, metrics_require_token=True))
    anonymous = httpx.Client(base_url=running.base_url, timeout=10)
    r = anonymous.get("/metrics")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/healthz").status_code == 200
    assert "files_processed_total" in running.get("/metrics").text
    assert running.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"]
    anonymous.close()


def test_a_token_rotated_in_its_file_takes_effect_without_a_restart(
    service_factory: Callable[..., RunningService],
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nfs_watcher_uploader.api.auth")
    folder = tmp_path / "secret"
    folder.mkdir()
    old, new = "old-token-" + "1" * 30, "new-token-" + "2" * 30
    _publish(folder, 1, old)
    running = service_factory(settings_factory(api_token_file=folder / "api-token"))
    client = running.client

    def status_with(token: str) -> int:
        return client.get("/v1/status", headers=_bearer(token)).status_code

    assert status_with(old) == 200 and status_with(new) == 401

    _publish(folder, 2, new)
    wait_for(lambda: status_with(new) == 200, timeout=30, what="the new token in force")
    assert status_with(old) == 401
    assert "API token changed" in caplog.text and new not in caplog.text

    # A file emptied, then gone, leaves the token in force and never opens the API.
    _publish(folder, 3, "")
    wait_for(lambda: "keeps the token it had" in caplog.text, timeout=30, what="the warning")
    (folder / "..v3" / "api-token").unlink()
    assert status_with(new) == 200 and client.get("/v1/status").status_code == 401
    _publish(folder, 4, new + "x")
    wait_for(lambda: status_with(new + "x") == 200, timeout=30, what="the file usable again")
    assert caplog.text.count("keeps the token it had") == 1
    assert old not in caplog.text and new not in caplog.text


def test_an_unusable_token_file_stops_start_up(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    missing = tmp_path / "no-such-token"
    proc = ServiceProcess(settings_factory(api_token_file=missing), tmp_path / "service.log")
    proc.start(wait_ready=False)
    assert proc.proc is not None
    assert proc.proc.wait(60) == 1
    text = proc.log.read_text()
    assert f"APP_API_TOKEN_FILE {missing}: No such file or directory" in text
    assert "Traceback" not in text


def _release(fifo: Path) -> None:
    """Let a reader that waits on `fifo` go (a writer came), if it is still there."""
    try:
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.adversarial
@pytest.mark.parametrize("what", ["a FIFO", "a link out of its folder"])
def test_a_token_file_that_is_a_fifo_or_a_link_elsewhere_stops_start_up_with_a_line(
    tmp_path: Path, settings_factory: Callable[..., Settings], what: str
) -> None:
    """APP_API_TOKEN_FILE pointing at a FIFO hung start-up before the server listened (the
    README promises a line and an exit).

    Issue 21, finding 8.
    """
    folder = tmp_path / "secret"
    folder.mkdir()
    path = folder / "api-token"
    if what == "a FIFO":
        os.mkfifo(path)
    else:
        (tmp_path / "elsewhere").write_text(TOKEN)
        path.symlink_to(tmp_path / "elsewhere")
    proc = ServiceProcess(settings_factory(api_token_file=path), tmp_path / "service.log")
    proc.start(wait_ready=False)
    assert proc.proc is not None
    try:
        code = proc.proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        proc.proc.wait()
        pytest.fail(f"start-up went on (or hung) with {what}: {proc.log.read_text()[-2000:]}")
    finally:
        _release(path)
    text = proc.log.read_text()
    assert code == 1, text
    assert f"APP_API_TOKEN_FILE {path}:" in text
    assert ("FIFO" if what == "a FIFO" else "outside its folder") in text
    assert "Traceback" not in text


@pytest.mark.adversarial
async def test_a_token_file_rotated_to_a_fifo_keeps_the_token_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation that left a FIFO where the token was: the reader hung (in a thread nobody
    could cancel), and the token could never be rotated again.

    Issue 21, finding 8.
    """
    path = tmp_path / "api-token"
    path.write_text(TOKEN)
    token = ApiToken.from_settings(
        Settings(
            azure_account_url="http://127.0.0.1:1/devstoreaccount1",
            azure_container="c",
            api_token_file=path,
        )
    )
    assert token is not None and token.accepts(TOKEN)
    path.unlink()
    os.mkfifo(path)
    reload = asyncio.ensure_future(token.reload_once())
    done, _ = await asyncio.wait({reload}, timeout=10)
    if not done:
        _release(path)
        await reload
        pytest.fail("reading a token file that is a FIFO hung")
    assert token.accepts(TOKEN)
    assert "keeps the token it had" in caplog.text and "FIFO" in caplog.text
