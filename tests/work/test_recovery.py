"""After a restart every file a previous run left goes up, once; a folder that cannot be a
session's is left alone."""

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.sessions.session import today_utc
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    leftover_files,
    parked_files,
    put_blob,
    session_view,
    until,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_restart_with_a_completed_and_a_claimed_file_of_one_name_uploads_both(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """What a kill leaves when a recorder reuses a name: version one committed and in
    `_completed/` (GC had not run yet), version two claimed in `.processing`. On restart,
    version two goes up as a~2.bin but its completion waits for `_completed/a.bin` to go
    (TAKEN), while GC's re-check of the adopted `_completed/a.bin` waits for `.processing/a.bin`
    to go (TAKEN). Neither ever moves: retried forever, the session never drains.

    Should: version one is recognised as already up and collected, version two goes up as
    a~2.bin and is completed; nothing left retrying.

    Finding adversary-review-A (second adversarial review, issue 10).
    """
    settings = settings_factory(drain_timeout_s=60)
    date = today_utc()
    proc = settings.nfs_processing_root
    write_file(proc / "_completed" / date / "ring" / "a.bin", b"version one")
    write_file(proc / date / "ring" / "a.bin", b"version two")
    container = azurite.container(settings.azure_container)
    container.create_container()
    put_blob(container, f"{date}/ring/a.bin", b"version one")

    running = service_factory(settings)
    assert wait_for(lambda: blob_bytes(container, f"{date}/ring/a~2.bin")) == b"version two"
    assert running.post("/v1/watch/stop").status_code == 200

    def settled() -> bool:
        status = running.get("/v1/status").json()
        return status["retrying"] == 0 and status["in_flight"] == 0

    wait_for(settled, timeout=15, what="nothing retrying")
    until(
        lambda: session_view(running, "ring")["state"] == "drained",
        15,
        lambda: f"{session_view(running, 'ring')}; {sorted(p.name for p in proc.rglob('*.bin'))}",
    )


@pytest.mark.adversarial
def test_a_folder_in_processing_that_cannot_be_a_session_is_left_alone_never_a_500(
    service_factory: Any, settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Recovery registered a session for every folder under `.processing/<date>/`, by its name,
    unchecked (an operator who put a file back by hand, a restore, anyone who can write the
    share), and session names reached the API as plain `str`: a name that is not UTF-8 cannot
    be encoded as JSON.

    Should: such a folder is left alone and reported (it cannot be a session's); 200
    everywhere, a name in the parked tree shown as `bad\\xff`.

    Finding adversary-review-G (second adversarial review, issue 10).
    """
    settings = settings_factory()
    date = today_utc()
    for root in (settings.nfs_processing_root, settings.nfs_processing_root / "_failed"):
        folder = os.fsencode(root / date) + b"/bad\xff"
        os.makedirs(folder)
        with open(folder + b"/a.bin", "wb") as f:
            f.write(b"put back by hand")
    running = service_factory(settings)
    paths = ("/v1/status", "/v1/sessions", "/v1/files/failed")

    def answer(path: str) -> object:
        try:
            return running.get(path).status_code
        except httpx.HTTPError as exc:  # the server closed the connection without an answer
            return f"no answer: {exc!r}"

    answers = {p: answer(p) for p in paths}
    assert answers == dict.fromkeys(answers, 200), answers
    (parked,) = parked_files(running)
    assert parked["session_name"] == "bad\\xff"
    left = os.fsencode(settings.nfs_processing_root / date) + b"/bad\xff/a.bin"
    assert os.path.exists(left)  # left alone
    assert any("Leaving" in r.getMessage() and "bad" in r.getMessage() for r in caplog.records)


def test_recovery_uploads_leftovers_and_resumes_the_session(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    settings = settings_factory()
    left = settings.nfs_processing_root / "20260102" / "crashed"
    older = settings.nfs_processing_root / "20260101" / "older"
    files = {
        left / "a.bin": b"a" * 10,
        left / "b.completed": b"a user file that only looks like a marker",
        older / "c.bin": b"c",
    }
    for path, data in files.items():
        write_file(path, data)
    running = service_factory(settings)
    container = azurite.container(settings.azure_container)
    for path, data in files.items():
        name = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
        assert wait_for(lambda n=name: blob_bytes(container, n), timeout=20) == data
    status = running.get("/v1/status").json()
    assert status["active_session"] == "crashed"  # the newest session resumes
    assert running.get("/v1/sessions/older").json()["state"] in ("draining", "drained")
    # The resumed session is watched: a new file dropped in its incoming folder goes up.
    write_file(settings.nfs_incoming_dir / "crashed" / "new.bin", b"new")
    wait_for(lambda: blob_bytes(container, "20260102/crashed/new.bin"), timeout=20)
    wait_for(lambda: not leftover_files(tmp_path), timeout=20, what="nothing left behind")
