"""`verify` tells apart a session storage has nothing of (a wrong date or name: "no such
session in storage") from one whose files are there but whose manifest is not yet (it has not
ended)."""

from typing import Any

from tests.support.cloud import run_verify
from tests.support.helpers import Azurite, blob_bytes, wait_for, write_file


def test_verify_names_a_session_with_nothing_in_storage_and_one_not_ended(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "live"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "live" / "a.bin", b"a")
    container = azurite.container(settings.azure_container)
    wait_for(lambda: blob_bytes(container, f"{date}/live/a.bin"), what="a.bin up")

    nothing = run_verify(settings, "20000101/live")
    assert nothing.returncode == 1
    assert "FAIL 20000101/live.manifest.json: no such session in storage" in nothing.stdout
    assert "nothing under 20000101/live/" in nothing.stdout

    running_now = run_verify(settings, f"{date}/live")
    assert running_now.returncode == 1
    assert "no manifest: the session has not ended yet" in running_now.stdout
