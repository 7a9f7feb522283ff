"""Every blob carries its metadata, Content-Type, tier and (when asked) tags."""

import hashlib
import os
from typing import Any

import pytest

from nfs_watcher_uploader.blob.blobinfo import iso_utc, iso_utc_ns, uploader_version
from tests.support.cloud import start_session, wait_manifest
from tests.support.helpers import (
    Azurite,
    wait_for,
    write_file,
)


def test_every_blob_carries_metadata_content_type_tier_and_tags(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(
        azure_access_tier="cool",
        azure_tags="project=p-14, site=lab 2:north",
        source_id="jetson-07",
        azure_max_single_put_size=64 * 1024,
        azure_max_block_size=64 * 1024,
    )
    running = service_factory(settings)
    date = start_session(running, "props")
    incoming = settings.nfs_incoming_dir / "props"
    files = {
        "cam/clip.mp4": ("video/mp4", os.urandom(3000)),
        "meta.json": ("application/json", b'{"a": 1}'),
        "raw.bin": ("application/octet-stream", os.urandom(200 * 1024)),  # in blocks
        "logs.tar.gz": ("application/gzip", os.urandom(500)),
        "NOEXT": ("application/octet-stream", b"x"),
    }
    mtimes: dict[str, int] = {}
    for rel, (_, data) in files.items():
        path = write_file(incoming / rel, data)
        os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789 + len(rel)))
        mtimes[rel] = path.stat().st_mtime_ns
    running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)
    manifest = wait_manifest(container, date, "props")
    tags = {"project": "p-14", "site": "lab 2:north", "session": "props"}
    for rel, (kind, data) in files.items():
        blob = container.get_blob_client(f"{date}/props/{rel}")
        props = blob.get_blob_properties()
        md5 = hashlib.md5(data).hexdigest()
        assert props.content_settings.content_type == kind, rel
        assert bytes(props.content_settings.content_md5 or b"").hex() == md5, rel
        assert props.metadata == {
            "session": "props",
            "source_id": "jetson-07",
            "uploader_version": uploader_version(),
            "source_mtime": iso_utc_ns(mtimes[rel]),
            "md5": md5,
        }, rel
        assert props.blob_tier == "Cool" and not props.blob_tier_inferred, rel
        assert blob.get_blob_tags() == tags, rel
    assert iso_utc_ns(1_700_000_000_123_456_789 + 4) == "2023-11-14T22:13:20.123456Z"
    # The manifest: JSON, the same tags, in the account's default tier (never archived).
    props = container.get_blob_client(f"{date}/props.manifest.json").get_blob_properties()
    assert props.content_settings.content_type == "application/json"
    assert props.blob_tier != "Cool"
    assert props.metadata["session"] == "props" and props.metadata["source_id"] == "jetson-07"
    # Lifecycle rules and queries can select a session's blobs by tag.
    found = {b.name for b in container.find_blobs_by_tags("\"session\"='props'")}
    assert found == {f"{date}/props/{rel}" for rel in files} | {f"{date}/props.manifest.json"}
    assert manifest["complete"] is True and manifest["source_id"] == "jetson-07"


def test_without_tags_no_tag_is_set(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """Tags need their own permission: a service not asked for them sets none."""
    settings = settings_factory()
    running = service_factory(settings)
    date = start_session(running, "plain")
    write_file(settings.nfs_incoming_dir / "plain" / "a.txt", b"a")
    container = azurite.container(settings.azure_container)
    blob = container.get_blob_client(f"{date}/plain/a.txt")
    wait_for(blob.exists, timeout=20)
    props = blob.get_blob_properties()
    assert props.tag_count in (None, 0) and blob.get_blob_tags() == {}
    assert props.content_settings.content_type == "text/plain"


@pytest.mark.parametrize(
    ("ns", "shown"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (1_764_500_000_123_456_789, "2025-11-30T10:53:20.123456Z"),
        (-315_619_200 * 10**9, "1960-01-01T00:00:00.000000Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
        (253_402_300_799 * 10**9, "9999-12-31T23:59:59.000000Z"),
        (253_402_300_800 * 10**9, "+10000-01-01T00:00:00.000000Z"),
        (-62_135_596_800 * 10**9 - 86_400 * 10**9, "0000-12-31T00:00:00.000000Z"),
        (-62_198_755_200 * 10**9, "-0001-01-01T00:00:00.000000Z"),
        (2**80, "+38311304-03-04T06:43:49.174706Z"),
    ],
)
def test_any_mtime_a_filesystem_can_hold_is_formatted_as_a_time(ns: int, shown: str) -> None:
    assert iso_utc_ns(ns) == shown


def test_any_finite_time_read_back_is_formatted_as_a_time() -> None:
    """A reason file's `at`, or a time in sessions.json, is read back from the share: 1e308
    overflowed the float multiplication and raised, a GC chore with it (and the GC loop).

    Found attacking issue 21's change.
    """
    assert iso_utc(1_764_500_000.123456) == "2025-11-30T10:53:20.123456Z"
    assert iso_utc(-0.5) == "1969-12-31T23:59:59.500000Z"
    assert iso_utc(1e308).startswith("+") and iso_utc(-1e308).startswith("-")
