"""Attack review of the block id key, the proxy read once, the job shapes and the rewritten
idle watcher: each test reproduces one finding (it fails on the code it was written against,
and passes once the finding is fixed)."""

import errno
import hashlib
import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.block_ids import block_id

from .helpers import (
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    wait_for,
    write_file,
)
from .relay import Relay

MIB = 1024 * 1024
# A key anyone can know: what an attacker put where the service takes its key from.
KNOWN_KEY = b"k" * 32


def _plant_and_upload(running: Any, azurite: Azurite, container_name: str, block: int) -> bytes:
    """Stage, before the file goes up, a block of zeros under the id the known key gives the
    file's first block; upload the file; return the blob's first block."""
    settings = running.settings
    date = running.post("/v1/watch/start", json={"session_name": "cam"}).json()["date_prefix"]
    data = os.urandom(5 * block)
    first_md5 = hashlib.md5(data[:block]).digest()
    planted = b"\0" * block
    blob_name = f"{date}/cam/rec.bin"
    container = azurite.container(container_name)
    container.get_blob_client(blob_name).stage_block(
        block_id(KNOWN_KEY, 0, first_md5),
        planted,
        transactional_content_md5=hashlib.md5(planted).digest(),
    )
    incoming = settings.nfs_incoming_dir / "cam"
    write_file(incoming / ".rec.bin.XyZ123", data)
    os.rename(incoming / ".rec.bin.XyZ123", incoming / "rec.bin")
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=60, what="upload")
    got = blob_bytes(container, blob_name)
    assert got is not None
    return got[:block]


@pytest.mark.parametrize("how", ["symlink", "world-readable"])
def test_a_block_id_key_others_know_is_never_used(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    container_name: str,
    tmp_path: Path,
    how: str,
) -> None:
    """block_ids.load_block_key reads `path.read_bytes()`: it follows a symbolic link, and it
    takes a key of any mode and owner. So a block-id.key that is a link to a file others can
    read (or a key file left readable by all: restored from a backup, copied by hand, made by
    someone else before the first start) is a key others know, and the planted-block attack of
    test_attack2 works again: the blob commits the planted zeros under the right Content-MD5."""
    block = 4 * MIB
    settings = settings_factory(azure_max_block_size=block, azure_max_single_put_size=block)
    key = settings.nfs_processing_root / "block-id.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    if how == "symlink":
        public = tmp_path / "public.bin"
        public.write_bytes(KNOWN_KEY)
        public.chmod(0o644)
        key.symlink_to(public)
    else:
        key.write_bytes(KNOWN_KEY)
        key.chmod(0o644)
    running = service_factory(settings)
    planted_in_blob = _plant_and_upload(running, azurite, container_name, block) == bytes(block)
    assert not planted_in_blob, f"a key that is {how} was used: the planted block is in the blob"


@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_a_block_id_key_that_is_not_a_file_never_stops_the_service(
    service_factory: Any, settings_factory: Any, what: str
) -> None:
    """load_block_key sets aside a key of the wrong length only: a `block-id.key` that is a
    folder raises IsADirectoryError, and `_until_ok` retries it for ever (the service is never
    ready, no upload ever starts). One that is a FIFO blocks `read_bytes` in open(): each try
    is abandoned at the NFS deadline with its thread stuck, until MAX_ABANDONED_THREADS of them
    make every NFS call fail ("NFS is not answering")."""
    settings = settings_factory(nfs_timeout_s=1.0)
    key = settings.nfs_processing_root / "block-id.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    if what == "folder":
        key.mkdir()
    else:
        os.mkfifo(key)
    try:
        running = service_factory(settings, wait_ready=False)
        wait_for(
            lambda: running.get("/readyz").status_code == 200,
            timeout=40,
            interval=0.5,
            what=f"readyz 200 despite a block-id.key that is a {what}",
        )
        made = key.parent / "block-id.key"
        st = os.lstat(made)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 32
    finally:
        if what == "fifo":  # release the threads blocked opening it
            for entry in key.parent.iterdir():
                if stat.S_ISFIFO(os.lstat(entry).st_mode):
                    try:
                        os.close(os.open(entry, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError as exc:  # ENXIO: no reader, so no thread blocked on it
                        if exc.errno != errno.ENXIO:
                            raise


def test_a_connection_string_pointing_elsewhere_than_the_account_url_never_starts(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """Found as a proxy chosen for the wrong host: with connection-string auth the requests went
    to the connection string's BlobEndpoint, another host than APP_AZURE_ACCOUNT_URL, whose
    proxy and NO_PROXY were the ones applied. Two endpoints for one account are now refused at
    start (settings_checks), naming both variables, before any request is sent."""
    relay = Relay(azurite.port, allow=frozenset({"127.0.0.3"})).start()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_auth="connection-string",
        azure_account_url=relay.url.replace("127.0.0.1", "localhost"),
        azure_connection_string=azurite.connection_string.replace(azurite.url, relay.url),
    )
    service = ServiceProcess(settings, tmp_path / "service.log")
    try:
        service.start(wait_ready=False)
        assert service.proc is not None
        assert service.proc.wait(30) == 1
        log = service.log.read_text()
        assert "APP_AZURE_ACCOUNT_URL" in log and "APP_AZURE_CONNECTION_STRING" in log, log
        assert relay.refused == 0
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.signal(signal.SIGTERM)
        relay.stop()
