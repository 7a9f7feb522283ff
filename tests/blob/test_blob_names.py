"""A file goes up under its own name or not at all: one rule set says which names Azure would
store as another (a backslash becomes '/', `..` is resolved, a trailing '.' dropped), and a
file with such a name is parked with the rule it breaks."""

from typing import Any

import pytest

from nfs_watcher_uploader.items import blob_name_problem
from tests.support.cloud import blobs_of
from tests.support.helpers import Azurite, parked_files, wait_for, write_file


@pytest.mark.adversarial
def test_a_name_with_a_backslash_is_parked_never_uploaded_as_another_file(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """`cam\\x.bin` went up as the blob `cam/x.bin` (storage reads a backslash as '/'): with
    APP_ON_NAME_CONFLICT=overwrite it replaced the bytes of the real `cam/x.bin`, whose source
    GC then deleted.

    Issue 21, finding 1.
    """
    settings = settings_factory(on_name_conflict="overwrite")
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "bs"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "bs"
    write_file(incoming / "cam" / "x.bin", b"the real cam/x.bin")
    container = azurite.container(settings.azure_container)
    wait_for(lambda: blobs_of(container, f"{date}/bs/"), what="cam/x.bin uploaded")
    write_file(incoming / "cam\\x.bin", b"another file")
    (parked,) = wait_for(lambda: parked_files(running), what="cam\\x.bin parked")
    assert parked["filename"] == "cam\\x.bin"
    assert "'\\'" in parked["reason"]
    assert blobs_of(container, f"{date}/bs/") == {f"{date}/bs/cam/x.bin": b"the real cam/x.bin"}
    folder = settings.nfs_processing_root / "_failed" / date / "bs"
    assert (folder / "cam\\x.bin").read_bytes() == b"another file"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("d/s/cam\\x.bin", "'\\'"),
        ("d/s/x\\", "end with"),
        ("d/s/x.", "end with"),
        ("d/s/x/", "end with"),
        ("d/s/a//b", "segments"),
        ("d/s/./b", "segments"),
        ("d/s/../b", "segments"),
        ("d/s/" + "a" * 1021, "characters"),
        ("d/s/" + "a/" * 253 + "b", "segments"),
        ("d/s/\udcff.bin", "UTF-8"),
    ],
)
def test_one_rule_set_refuses_every_name_storage_would_keep_as_another(name: str, why: str) -> None:
    problem = blob_name_problem(name)
    assert problem is not None and why in problem


def test_a_name_within_the_rules_is_a_blob_name() -> None:
    assert blob_name_problem("20261204/s/cam 1/ré.c.bin") is None
    assert blob_name_problem("d/s/" + "a/" * 251 + "b") is None  # 254 segments
