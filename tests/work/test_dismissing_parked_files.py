"""A parked file can be dismissed: DELETE /v1/files/failed/{session}/{parked_as} (token
protected) removes it and its reason, records it in the manifest as dismissed (the session is
then never `complete`), counts and logs it, and lets the session drain. A file removed from
`_failed/` by hand is noticed on GC's beat (or at the next start) and treated the same way.
Hostile names are refused and change nothing."""

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import Azurite, RunningService, wait_for, write_file
from tests.support.mounts import bind_mount

TOKEN = "dismiss-token-0123456789"


def _failed(running: RunningService) -> list[dict[str, Any]]:
    return running.get("/v1/files/failed").json()["files"]


def _view(running: RunningService, name: str) -> dict[str, Any]:
    return running.get(f"/v1/sessions/{name}").json()


def _park(running: RunningService, session: str, *rels: str) -> str:
    """Start `session`, write files Azure refuses the names of (a trailing '.'), one after
    the other, until each is parked; returns the session's date."""
    date = running.post("/v1/watch/start", json={"session_name": session}).json()["date_prefix"]
    incoming = running.settings.nfs_incoming_dir / session
    for count, rel in enumerate(rels, 1):
        write_file(incoming / rel, rel.encode())
        wait_for(lambda c=count: _view(running, session)["failed"] == c, what=f"{rel} parked")
    return date


def _manifest(azurite: Azurite, settings: Settings, date: str, name: str) -> dict[str, Any] | None:
    blob = azurite.container(settings.azure_container).get_blob_client(
        f"{date}/{name}.manifest.json"
    )
    return json.loads(blob.download_blob().readall()) if blob.exists() else None


def _raw(running: RunningService, method: str, target: str, token: str | None = TOKEN) -> int:
    """Send `target` byte for byte (no client normalises its `..` or escapes); the status."""
    port = int(running.base_url.rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_dismissed_file_leaves_failed_is_in_the_manifest_and_the_session_drains(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    date = _park(running, "p", "bad.", "cam/deep.")
    write_file(settings.nfs_incoming_dir / "p" / "ok.bin", b"fine")
    wait_for(lambda: _view(running, "p")["uploaded"] == 1, what="ok.bin up")
    running.post("/v1/watch/stop")
    failed = settings.nfs_processing_root / "_failed" / date / "p"
    reasons = settings.nfs_processing_root / "_failed_reasons" / date / "p"
    # Token protected, like every /v1 route.
    assert _raw(running, "DELETE", "/v1/files/failed/p/bad.", token=None) == 401
    assert (failed / "bad.").exists()

    caplog.set_level(logging.WARNING, logger="nfs_watcher_uploader")
    answer = running.client.delete("/v1/files/failed/p/bad.")
    assert answer.status_code == 200, answer.text
    gone = answer.json()["dismissed"]
    assert (gone["filename"], gone["parked_as"], gone["date_prefix"]) == ("bad.", "bad.", date)
    assert "blob names must not end with" in gone["reason"]
    assert not (failed / "bad.").exists() and not (reasons / "bad.").exists()
    view = _view(running, "p")
    assert (view["failed"], view["dismissed"], view["state"]) == (1, 1, "draining")
    assert any("dismissed" in r.getMessage() and "bad." in r.getMessage() for r in caplog.records)
    # A second dismissal of the same name finds nothing.
    assert running.client.delete("/v1/files/failed/p/bad.").status_code == 404

    assert running.client.delete("/v1/files/failed/p/cam/deep.").status_code == 200
    wait_for(lambda: _view(running, "p")["state"] == "drained", what="the session to drain")
    assert running.get("/v1/status").json()["dismissed"] == 2
    manifest = wait_for(lambda: _manifest(azurite, settings, date, "p"), what="the manifest")
    assert manifest is not None
    assert manifest["state"] == "drained" and manifest["complete"] is False
    assert manifest["totals"]["dismissed"] == 2 and manifest["totals"]["files"] == 1
    assert sorted(d["path"] for d in manifest["dismissed"]) == ["bad.", "cam/deep."]
    assert all(d["reason"] and d["dismissed_at"] and d["parked_at"] for d in manifest["dismissed"])


def test_hostile_names_in_a_dismissal_are_refused_and_change_nothing(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    date = _park(running, "h", "x.", "x.")  # the second is parked as its next free name
    names = sorted(f["parked_as"] for f in _failed(running))
    assert len(names) == 2 and names[0] == "x.", names
    second = names[1]  # "x~2."
    failed = settings.nfs_processing_root / "_failed" / date / "h"
    outside = write_file(tmp_path / "outside" / "precious.bin", b"not the service's")
    (failed / "link.").symlink_to(outside)
    (failed / "folder.").mkdir()
    state = settings.nfs_processing_root / "sessions.json"
    for target, status in [
        ("/v1/files/failed/h/../../sessions.json", 422),
        ("/v1/files/failed/h/..%2F..%2Fsessions.json", 422),
        ("/v1/files/failed/h/%2E%2E/x.", 422),
        ("/v1/files/failed/h/%2Fetc%2Fpasswd", 422),
        ("/v1/files/failed/h/a%00b", 422),
        ("/v1/files/failed/h/x./", 422),
        ("/v1/files/failed/..%2Fh/x.", 422),  # the session segment is ".."
        ("/v1/files/failed/h%2F..%2Fh/x.", 422),
        ("/v1/files/failed/h/x.?date_prefix=yesterday", 422),
        ("/v1/files/failed/h/nosuch", 404),
        ("/v1/files/failed/h/x~3.", 404),
        ("/v1/files/failed/other/x.", 404),
        ("/v1/files/failed/h/link.", 404),  # a link planted in _failed: never followed
        ("/v1/files/failed/h/folder.", 404),
        ("/v1/files/failed/h/x.?date_prefix=19990101", 404),
    ]:
        assert _raw(running, "DELETE", target) == status, target
    assert outside.read_bytes() == b"not the service's" and state.exists()
    assert (failed / "link.").is_symlink()  # (GC may prune the empty folder meanwhile)
    assert sorted(f["parked_as"] for f in _failed(running)) == names
    assert _view(running, "h")["dismissed"] == 0
    # The second park of a name is dismissed by its own name, and only it.
    listed = {f["parked_as"]: f for f in _failed(running)}
    answer = running.client.delete(f"/v1/files/failed/h/{second}")
    assert answer.json()["dismissed"] == listed[second]
    assert listed[second]["filename"] == "x." and "must not end with" in listed[second]["reason"]
    assert [f["parked_as"] for f in _failed(running)] == ["x."]
    assert (failed / "x.").exists()


def test_a_parked_file_removed_by_hand_is_dismissed_at_gcs_next_beat(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(gc_interval_s=0.3)
    running = service_factory(settings)
    date = _park(running, "hand", "gone.")
    running.post("/v1/watch/stop")
    (settings.nfs_processing_root / "_failed" / date / "hand" / "gone.").unlink()
    wait_for(lambda: _view(running, "hand")["state"] == "drained", what="the session to drain")
    view = _view(running, "hand")
    assert (view["failed"], view["dismissed"]) == (0, 1)
    assert any("removed from _failed/ by hand" in n for n in view["notices"])
    reason = settings.nfs_processing_root / "_failed_reasons" / date / "hand" / "gone."
    assert not reason.exists()
    manifest = wait_for(lambda: _manifest(azurite, settings, date, "hand"), what="manifest")
    assert manifest is not None and manifest["complete"] is False
    assert [d["path"] for d in manifest["dismissed"]] == ["gone."]
    assert "must not end with" in manifest["dismissed"][0]["reason"]


def test_a_parked_file_removed_while_the_service_was_down_is_dismissed_at_start(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(drain_timeout_s=0.5)
    running = service_factory(settings)
    date = _park(running, "down", "gone.")
    running.post("/v1/watch/stop")
    wait_for(lambda: _view(running, "down")["state"] == "drain_timed_out", what="time out")
    wait_for(lambda: _manifest(azurite, settings, date, "down"), what="first manifest")
    running.stop()
    (settings.nfs_processing_root / "_failed" / date / "down" / "gone.").unlink()
    again = service_factory(settings)
    wait_for(lambda: _view(again, "down")["state"] == "drained", what="the session to drain")
    assert _view(again, "down")["dismissed"] == 1

    def rewritten() -> dict[str, Any] | None:
        manifest = _manifest(azurite, settings, date, "down")
        return manifest if manifest and manifest["state"] == "drained" else None

    manifest = wait_for(rewritten, what="the manifest written anew")
    assert manifest is not None and manifest["complete"] is False
    assert manifest["totals"]["parked"] == 0 and manifest["totals"]["dismissed"] == 1


@pytest.mark.adversarial
def test_a_dismissal_records_the_parked_files_own_path_whatever_its_reason_file_says(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A reason file is read back from the share: one rewritten to name another path (a file
    that did go up) made the manifest list that file as dismissed, not in storage.

    Review of issues 19/20, finding 10.
    """
    settings = settings_factory(api_token=TOKEN)
    running = service_factory(settings)
    date = _park(running, "lie", "bad.")
    write_file(settings.nfs_incoming_dir / "lie" / "good.bin", b"good")
    wait_for(lambda: _view(running, "lie")["uploaded"] == 1, what="good.bin up")
    running.post("/v1/watch/stop")
    reason = settings.nfs_processing_root / "_failed_reasons" / date / "lie" / "bad."
    reason.write_text(json.dumps({"reason": "x", "rel": "good.bin", "at": 0}))
    assert running.client.delete("/v1/files/failed/lie/bad.").status_code == 200

    def drained() -> dict[str, Any] | None:
        found = _manifest(azurite, settings, date, "lie")
        return found if found and found["state"] == "drained" else None

    manifest = wait_for(drained, what="the manifest after the dismissal")
    assert manifest is not None
    assert [d["path"] for d in manifest["dismissed"]] == ["bad."]


@pytest.mark.adversarial
def test_a_dismissal_cut_short_is_recorded_though_a_file_of_that_name_is_parked_meanwhile(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A dismissal whose ledger line cannot be written (NFS fails after the file was removed)
    answers 503 and leaves the reason behind, to be recorded at the next check. A file of the
    same name parked meanwhile took the free name and wrote its reason over that one: the first
    file was then neither in storage, nor parked, nor dismissed anywhere. A name whose reason is
    still there is not free.

    Review of issues 19/20, finding 11.
    """
    settings = settings_factory(api_token=TOKEN, gc_interval_s=0.3)
    running = service_factory(settings)
    date = _park(running, "cut", "x.")
    folder = settings.nfs_processing_root / "_ledgers" / date
    folder.mkdir(parents=True)
    # The ledger cannot be written (its folder on a read-only mount): an NFS failure, a while.
    with bind_mount(folder, folder, read_only=True):
        answer = running.client.delete("/v1/files/failed/cut/x.")
        assert answer.status_code == 503, answer.text
        write_file(settings.nfs_incoming_dir / "cut" / "x.", b"second")
        wait_for(lambda: len(_failed(running)) == 1, what="the second x. parked")
    # NFS is back
    wait_for(lambda: _view(running, "cut")["dismissed"] == 1, what="the first x. dismissed")
    (listed,) = _failed(running)
    assert "must not end with" in listed["reason"] and listed["filename"] == "x."
    running.post("/v1/watch/stop")
    assert running.client.delete(f"/v1/files/failed/cut/{listed['parked_as']}").status_code == 200

    def drained() -> dict[str, Any] | None:
        found = _manifest(azurite, settings, date, "cut")
        return found if found and found["state"] == "drained" else None

    manifest = wait_for(drained, what="the manifest")
    assert manifest is not None and manifest["totals"]["dismissed"] == 2


@pytest.mark.adversarial
def test_a_reason_file_planted_for_a_session_never_dismisses_anything_of_it(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A reason without its parked file is settled at start-up as a dismissal. Anyone who can
    write the share can plant one under any session: the session was reopened, counted a
    dismissal and its manifest was written anew as not complete, though nothing of it was ever
    parked.

    Review of issues 19/20, finding 13.
    """
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "whole"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "whole" / "a.bin", b"a")
    wait_for(lambda: _view(running, "whole")["uploaded"] == 1, what="a.bin up")
    running.post("/v1/watch/stop")
    first = wait_for(lambda: _manifest(azurite, settings, date, "whole"), what="the manifest")
    assert first is not None and first["complete"] is True
    running.stop()
    planted = settings.nfs_processing_root / "_failed_reasons" / date / "whole" / "ghost.bin"
    write_file(planted, json.dumps({"reason": "x", "rel": "ghost.bin", "at": 0}).encode())
    again = service_factory(settings)
    view = _view(again, "whole")
    assert (view["dismissed"], view["state"]) == (0, "drained"), view
