"""A whole session goes up byte-exact through the real service, API and Azurite."""

import hashlib
import os
from pathlib import Path

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import (
    Azurite,
    RunningService,
    blob_bytes,
    leftover_files,
    wait_for,
    write_file,
)

AWKWARD_NAMES = [
    "plain.bin",
    "with space.dat",
    "ünïcødé-名前.bin",
    "hash#tag.bin",
    "per%cent%20.bin",
    "semi;colon.bin",
    "-leading-dash.bin",
    "x" * 200,
    "recording.completed",
    "empty.bin",
]


def test_a_session_uploads_every_file_byte_exact(
    running: RunningService, settings: Settings, azurite: Azurite, tmp_path: Path
) -> None:
    r = running.post("/v1/watch/start", json={"session_name": "sess-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["session_name"] == "sess-1"
    date = body["date_prefix"]
    assert len(date) == 8 and date.isdigit()

    incoming = settings.nfs_incoming_dir / "sess-1"
    assert incoming.is_dir()
    expected: dict[str, bytes] = {}
    for i, name in enumerate(AWKWARD_NAMES):
        data = b"" if name == "empty.bin" else os.urandom(1000 + i)
        expected[name] = data
        write_file(incoming / name, data)
    big = os.urandom(20 * 1024 * 1024 + 123)  # over the single-put size: goes in blocks
    expected["big.bin"] = big
    write_file(incoming / "big.bin", big)

    container = azurite.container(settings.azure_container)

    def all_uploaded() -> bool:
        return all(blob_bytes(container, f"{date}/sess-1/{n}") is not None for n in expected)

    wait_for(all_uploaded, timeout=60, what="all blobs")
    for name, data in expected.items():
        blob = container.get_blob_client(f"{date}/sess-1/{name}")
        assert blob.download_blob().readall() == data, name
        props = blob.get_blob_properties()
        assert bytes(props.content_settings.content_md5 or b"") == hashlib.md5(data).digest(), name

    status = running.get("/v1/status").json()
    assert status["processed_ok"] == len(expected)
    assert status["processed_err"] == 0
    assert status["active_session"] == "sess-1"
    wait_for(
        lambda: not leftover_files(tmp_path), timeout=10, what="incoming and .processing empty"
    )

    stop = running.post("/v1/watch/stop")
    assert stop.status_code == 200
    assert stop.json()["session_name"] == "sess-1"
    view = wait_for(
        lambda: (v := running.get("/v1/sessions/sess-1").json())["drained"] and v,
        timeout=10,
        what="session drained",
    )
    assert view["uploaded"] == len(expected)
    assert view["bytes_uploaded"] == sum(len(d) for d in expected.values())
