"""A name held by other bytes is never overwritten: both files are kept, and two uploads never mix
their bytes in one blob."""

import os
from typing import Any

import pytest

from nfs_watcher_uploader.sessions.session import today_utc
from tests.support.cloud import blobs_of
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    put_blob,
    session_view,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_reused_name_keeps_both_versions(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """Finding adversary-9 (first adversarial review, issue 10)."""
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "reuse"}).json()["date_prefix"]
    path = settings.nfs_incoming_dir / "reuse" / "chunk_0001.bin"
    container = azurite.container(settings.azure_container)
    blob = f"{date}/reuse/chunk_0001"
    write_file(path, b"version one")
    assert wait_for(lambda: blob_bytes(container, f"{blob}.bin")) == b"version one"
    wait_for(lambda: not path.exists())
    write_file(path, b"version two")
    assert wait_for(lambda: blob_bytes(container, f"{blob}~2.bin")) == b"version two"
    assert blob_bytes(container, f"{blob}.bin") == b"version one"
    view = wait_for(lambda: (v := session_view(running, "reuse"))["renamed"] == 1 and v)
    assert any("chunk_0001~2.bin" in n for n in view["notices"])
    # The same bytes again are already up: counted, nothing new is created.
    wait_for(lambda: not path.exists())
    write_file(path, b"version one")
    wait_for(lambda: session_view(running, "reuse")["uploaded"] == 3)
    names = sorted(b.name for b in container.list_blobs())
    assert names == [f"{blob}.bin", f"{blob}~2.bin"]


@pytest.mark.adversarial
def test_two_block_uploads_racing_for_one_free_name_never_mix_their_bytes(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A recorder wrote a.bin earlier (in storage), then a new a.bin and its own a~2.bin at
    once. Both are larger than the single-put size. The new a.bin finds a.bin held by other
    bytes and picks a~2.bin; the recorder's a~2.bin picks a~2.bin too; both see it free and
    stage their blocks on it under the same block ids (00000000, 00000001, ...). Azure keeps
    the last block staged per id, and the first commit makes a blob of both files' blocks; its
    Content-MD5 property is not checked on commit. The other file then goes up as a~3.bin.

    Should: every blob is byte for byte one of the files (block ids unique per upload), and
    both new files are in storage.

    Finding adversary-review-E (second adversarial review, issue 10).
    """
    settings = settings_factory(
        azure_max_block_size=64 * 1024, azure_max_single_put_size=64 * 1024, min_file_age_s=0.0
    )
    date = today_utc()
    container = azurite.container(settings.azure_container)
    container.create_container()
    put_blob(container, f"{date}/mix/a.bin", b"an earlier a.bin")
    incoming = settings.nfs_incoming_dir / "mix"
    new_a, own_a2 = os.urandom(4 * 1024 * 1024), os.urandom(4 * 1024 * 1024)
    write_file(incoming / "a.bin", new_a)
    write_file(incoming / "a~2.bin", own_a2)
    running = service_factory(settings)
    assert running.post("/v1/watch/start", json={"session_name": "mix"}).status_code == 200
    wait_for(
        lambda: session_view(running, "mix")["uploaded"] == 2, timeout=60, what="both uploaded"
    )
    blobs = blobs_of(container, f"{date}/mix/")
    files = {b"an earlier a.bin": "old a.bin", new_a: "new a.bin", own_a2: "own a~2.bin"}
    found = {name: files.get(data, "MIXED BYTES") for name, data in blobs.items()}
    assert sorted(found.values()) == ["new a.bin", "old a.bin", "own a~2.bin"], found
