"""A file sent again whole over its own blob (after a late write) replaces only the version its
own commit left there (If-Match on that ETag, through the lean request path): a version another
writer put there since (another replica's, a consumer's) is never replaced, and the file is
parked instead; a blob removed since is created again, only if still absent. Both ways a file
goes up: one Put Blob, and blocks with Put Block List."""

import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.errors import PermanentError
from nfs_watcher_uploader.nfs import copying
from tests.support.helpers import Azurite, blob_bytes, write_file

BLOCK = 64 * 1024
SIZES = {"single put": 1000, "blocks": 3 * BLOCK + 5}


def _staged(tmp_path: Path, data: bytes) -> tuple[Path, copying.Staged]:
    name = uuid.uuid4().hex
    src = write_file(tmp_path / "src" / name, data)
    dst = tmp_path / "staged" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst, copying.copy_and_hash(src, dst, lambda: None, BLOCK, BLOCK, 0)


async def _storage(azurite: Azurite) -> tuple[Storage, str]:
    container = f"own{uuid.uuid4().hex[:20]}"
    settings = Settings(
        azure_account_url=azurite.url,
        azure_connection_string=SecretStr(azurite.connection_string),
        azure_container=container,
        azure_max_block_size=BLOCK,
        azure_max_single_put_size=BLOCK,
    )
    storage = Storage(settings)
    await storage.connect()
    return storage, container


@pytest.mark.parametrize("way", list(SIZES))
async def test_a_late_write_replaces_only_the_version_its_own_commit_left(
    azurite: Azurite, tmp_path: Path, way: str
) -> None:
    storage, container = await _storage(azurite)
    client = azurite.container(container)
    size = SIZES[way]
    try:
        local, staged = _staged(tmp_path, b"1" * size)
        first = await storage.upload(local, "20261205/s/late.bin", staged, lambda: None)
        assert first.etag is not None and not first.already
        # The file changed after its commit: sent again whole, over its own version.
        local, staged = _staged(tmp_path, b"2" * size)
        again = await storage.upload(
            local, first.blob_name, staged, lambda: None, overwrite=True, if_match=first.etag
        )
        assert again.etag not in (None, first.etag)
        assert blob_bytes(client, first.blob_name) == b"2" * size
        # Another writer's version since: never replaced, the file is parked.
        client.upload_blob(first.blob_name, b"another writer's bytes", overwrite=True)
        local, staged = _staged(tmp_path, b"3" * size)
        with pytest.raises(PermanentError, match="changed since this file was committed"):
            await storage.upload(
                local, first.blob_name, staged, lambda: None, overwrite=True, if_match=again.etag
            )
        assert blob_bytes(client, first.blob_name) == b"another writer's bytes"
        # Removed since (a consumer took it): created again.
        client.get_blob_client(first.blob_name).delete_blob()
        made = await storage.upload(
            local, first.blob_name, staged, lambda: None, overwrite=True, if_match=again.etag
        )
        assert made.etag is not None and blob_bytes(client, first.blob_name) == b"3" * size
    finally:
        await storage.close()
