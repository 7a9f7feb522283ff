"""A file goes up under its own name or not at all: a file whose name Azure would store as
another (a backslash becomes '/', `..` is resolved, a trailing '.' dropped) is parked with the
rule it breaks (the rule set itself: tests/test_items.py)."""

from typing import Any

import pytest

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
