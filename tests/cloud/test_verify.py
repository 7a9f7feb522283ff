"""`verify` passes on a good session and names every blob that differs from the manifest."""

import fcntl
import hashlib
import json
import os
import pty
import struct
import subprocess
import termios
from typing import Any

import pytest
from azure.storage.blob import ContentSettings

from tests.support.cloud import run_verify, wait_manifest
from tests.support.helpers import (
    ROOT,
    Azurite,
    RunningService,
    service_env,
    write_file,
)

FILES = {"a.bin": os.urandom(5000), "sub/b.txt": b"hello", "empty.bin": b""}


def _drained_session(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> tuple[RunningService, Any, str]:
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "v"}).json()["date_prefix"]
    for rel, data in FILES.items():
        write_file(settings.nfs_incoming_dir / "v" / rel, data)
    running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)
    wait_manifest(container, date, "v")
    return running, settings, date


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other end is closed and everything was read
        return b""


def test_verify_passes_on_a_good_session_and_names_an_overwritten_blob(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    _, settings, date = _drained_session(service_factory, settings_factory, azurite)
    good = run_verify(settings, f"{date}/v")
    assert good.returncode == 0, good.stdout + good.stderr
    assert sorted(line.split()[1] for line in good.stdout.splitlines()[:-1]) == sorted(
        f"{date}/v/{rel}" for rel in FILES
    )
    assert good.stdout.splitlines()[-1].endswith("all match")
    report = json.loads(run_verify(settings, f"{date}/v/", "--json", "--download").stdout)
    assert report["ok"] is True and report["checked"] == 3 and report["downloaded"] is True
    assert report["bytes_checked"] == sum(len(d) for d in FILES.values())

    # Overwritten behind the service's back: the Content-MD5 no longer matches.
    container = azurite.container(settings.azure_container)
    container.upload_blob(f"{date}/v/sub/b.txt", b"HELLO", overwrite=True)
    bad = run_verify(settings, f"{date}/v")
    assert bad.returncode == 1
    assert f"FAIL {date}/v/sub/b.txt: Content-MD5 " in bad.stdout
    assert "FAILED: 1 problems" in bad.stdout
    report = json.loads(run_verify(settings, f"{date}/v", "--json").stdout)
    assert report["ok"] is False
    assert [(p["blob"], p["scope"]) for p in report["problems"]] == [
        (f"{date}/v/sub/b.txt", "file")
    ]


def test_only_download_catches_bytes_whose_content_md5_was_set_by_hand(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    _, settings, date = _drained_session(service_factory, settings_factory, azurite)
    container = azurite.container(settings.azure_container)
    name = f"{date}/v/a.bin"
    blob = container.get_blob_client(name)
    props = blob.get_blob_properties()
    blob.upload_blob(os.urandom(5000), overwrite=True, metadata=props.metadata)
    forged = ContentSettings(content_md5=bytearray(hashlib.md5(FILES["a.bin"]).digest()))
    blob.set_http_headers(forged)
    assert run_verify(settings, f"{date}/v").returncode == 0  # properties alone look right
    deep = run_verify(settings, f"{date}/v", "--download")
    assert deep.returncode == 1
    assert f"FAIL {name}: its bytes hash to" in deep.stdout


def test_verify_fails_on_an_unlisted_blob_a_missing_manifest_and_a_bad_target(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    _, settings, date = _drained_session(service_factory, settings_factory, azurite)
    container = azurite.container(settings.azure_container)
    container.upload_blob(f"{date}/v/stray.bin", b"not ours")
    stray = run_verify(settings, f"{date}/v")
    assert stray.returncode == 1
    assert f"FAIL {date}/v/stray.bin: in the session's folder, not listed" in stray.stdout
    missing = run_verify(settings, f"{date}/nosuch")
    assert missing.returncode == 1
    assert f"FAIL {date}/nosuch.manifest.json: no such session in storage" in missing.stdout
    bad = run_verify(settings, "yesterday/v")
    assert bad.returncode == 2 and "is not <YYYYMMDD>/<session>" in bad.stderr
    # The connection string never shows.
    secret = settings.azure_connection_string.get_secret_value()
    for result in (stray, missing, bad):
        assert secret not in result.stdout + result.stderr


def test_verify_shows_a_progress_bar_on_a_terminal(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    _, settings, date = _drained_session(service_factory, settings_factory, azurite)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100
    try:
        result = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader"), "verify", f"{date}/v"],
            env=service_env(settings),
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=120,
        )
        os.close(follower)
        follower = -1
        screen = b""
        while chunk := _read(leader):
            screen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    text = screen.decode(errors="replace")
    assert "verify: 100%" in text and "3/3" in text
    # On a terminal, only problems and the summary are printed, not a line per file.
    assert result.stdout.splitlines() == [
        f"{date}/v: 3 of 3 files checked (size and Content-MD5), 5005 bytes; all match"
    ]


@pytest.mark.parametrize(
    "blob", ["20261130/demo/../other/x.bin", "20261130/demo/./x.bin", "20261130/demo//x.bin"]
)
async def test_a_listed_blob_that_would_resolve_outside_the_session_fails(blob: str) -> None:
    """A tampered manifest cannot point verify at a blob of another folder through `..` (the
    URL would resolve it): refused before storage is asked, and named printably."""
    from nfs_watcher_uploader.cloud.manifest import FileEntry
    from nfs_watcher_uploader.cloud.verify import _check, _line

    entry = FileEntry(
        blob=blob, path="x.bin", size=1, md5="0" * 32, source_mtime="", uploaded_at=""
    )
    problem = await _check(None, entry, "20261130/demo/", False)  # type: ignore[arg-type]
    assert problem is not None and "outside 20261130/demo/" in problem
    assert _line("20261130/demo/a\x1b[2Jb", "x") == "FAIL 20261130/demo/a\\x1b[2Jb: x"
