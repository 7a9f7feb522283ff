"""Block ids are keyed with a secret of this deployment: a block anyone else staged is never taken
for ours."""

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.blob.block_ids import block_id
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    wait_for,
    write_file,
)

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


@pytest.mark.adversarial
def test_a_planted_uncommitted_block_never_ends_up_in_the_blob(
    service_factory: Any, settings_factory: Any, azurite: Azurite, container_name: str
) -> None:
    """Block ids were `index-md5` of the block's bytes, and an uncommitted block with the
    expected id and size was trusted to hold those bytes (storage._put_blocks, early.offer). But
    a block id is only a label: anyone who may write to the container (a leaked `cw` SAS) can
    stage other bytes under it before the file goes up. The commit then takes those bytes, and
    the blob's Content-MD5 (set from NFS, never checked by Azure for a block list) still claims
    the right ones, so `verify` without --download says OK.

    Finding attack2-3 (attack review of issues 12 to 16).
    """
    block = 4 * MIB
    settings = settings_factory(azure_max_block_size=block, azure_max_single_put_size=block)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "cam"}).json()["date_prefix"]
    data = os.urandom(5 * block)  # over OVERLAP_MIN_BYTES: early blocks too
    first_md5 = hashlib.md5(data[:block]).digest()
    planted = b"\0" * block
    blob_name = f"{date}/cam/rec.bin"
    container = azurite.container(container_name)
    blob = container.get_blob_client(blob_name)
    # What an attacker can compute: the id from index and MD5 alone, or keyed with another key.
    for planted_id in (f"{0:08d}-{first_md5.hex()}", block_id(b"k" * 32, 0, first_md5)):
        blob.stage_block(
            planted_id, planted, transactional_content_md5=hashlib.md5(planted).digest()
        )
    # Written under an excluded name, then renamed: the way rsync delivers a file.
    incoming = settings.nfs_incoming_dir / "cam"
    write_file(incoming / ".rec.bin.XyZ123", data)
    os.rename(incoming / ".rec.bin.XyZ123", incoming / "rec.bin")
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=60, what="upload")
    got = blob_bytes(container, blob_name)
    assert got is not None
    assert got[:block] != planted, "the planted block was committed into the blob"
    assert hashlib.md5(got).hexdigest() == hashlib.md5(data).hexdigest()


@pytest.mark.adversarial
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
    test_attack2 works again: the blob commits the planted zeros under the right Content-MD5.

    Finding attack3-1 (attack review of the block id key).
    """
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


@pytest.mark.adversarial
@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_a_block_id_key_that_is_not_a_file_never_stops_the_service(
    service_factory: Any, settings_factory: Any, what: str
) -> None:
    """load_block_key sets aside a key of the wrong length only: a `block-id.key` that is a
    folder raises IsADirectoryError, and `_until_ok` retries it for ever (the service is never
    ready, no upload ever starts). One that is a FIFO blocks `read_bytes` in open(): each try
    is abandoned at the NFS deadline with its thread stuck, until MAX_ABANDONED_THREADS of them
    make every NFS call fail ("NFS is not answering").

    Finding attack3-2 (attack review of the block id key).
    """
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


def test_the_block_id_key_is_made_once_kept_private_and_a_damaged_one_set_aside(
    tmp_path: Path,
) -> None:
    from nfs_watcher_uploader.blob.block_ids import load_block_key

    path = tmp_path / "p" / "block-id.key"
    key = load_block_key(path)
    assert len(key) == 32 and load_block_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"short")
    replaced = load_block_key(path)
    assert len(replaced) == 32 and replaced != key
    assert [p.name for p in path.parent.iterdir() if "unfit" in p.name] != []
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
