"""The log line about blocks found in storage says where they came from: sent by this very
upload while the file was read (every first upload of a large file), or left by an earlier
attempt (a resume). A first upload never reads like a resume."""

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.blob.block_ids import block_id
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.nfs import copying
from tests.support.helpers import Azurite, blob_bytes, wait_for, write_file

BLOCK = 64 * 1024


def _block_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "blocks" in r.getMessage()]


def test_a_first_upload_of_a_large_file_says_its_blocks_went_while_it_was_read(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nfs_watcher_uploader")
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "big"}).json()["date_prefix"]
    data = os.urandom(20 * 1024 * 1024)  # above the 16 MiB from which blocks go early
    write_file(settings.nfs_incoming_dir / "big" / "large.bin", data)
    container = azurite.container(settings.azure_container)
    assert wait_for(lambda: blob_bytes(container, f"{date}/big/large.bin"), timeout=60) == data
    lines = _block_lines(caplog)
    assert any("sent while the file was read" in line for line in lines), lines
    assert not any("earlier attempt" in line or "resumed" in line for line in lines), lines


async def test_blocks_an_earlier_attempt_left_are_logged_as_a_resume(
    azurite: Azurite, settings_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nfs_watcher_uploader")
    settings = settings_factory(azure_max_block_size=BLOCK, azure_max_single_put_size=BLOCK)
    storage = Storage(settings)
    await storage.connect()
    try:
        src = write_file(tmp_path / "src" / "r.bin", os.urandom(3 * BLOCK))
        local = tmp_path / "staged" / "r.bin"
        local.parent.mkdir()
        staged = copying.copy_and_hash(src, local, lambda: None, BLOCK, BLOCK, 0)
        name = "20261204/resume/r.bin"
        blob = storage.container.get_blob_client(name)
        data = src.read_bytes()
        for index in (0, 1):  # what an attempt cut short had staged
            md5 = staged.block_md5s[index]
            chunk = data[index * BLOCK : (index + 1) * BLOCK]
            await blob.stage_block(block_id(storage.blocks.key, index, md5), chunk)
        await storage.upload(local, name, staged, lambda: None)
    finally:
        await storage.close()
    assert blob_bytes(azurite.container(settings.azure_container), name) == data
    lines = _block_lines(caplog)
    assert any(
        "resumed: 2 of 3 blocks were in storage from an earlier attempt" in line for line in lines
    ), lines
