"""The ledger keeps one line per committed blob, survives torn lines, and a file is not done until
its line is written."""

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.cloud.ledger import Ledger
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from tests.support.cloud import start_session, wait_manifest
from tests.support.helpers import (
    Azurite,
    wait_for,
    write_file,
)
from tests.support.mounts import bind_mount


async def test_the_ledger_groups_appends_skips_a_torn_line_and_keeps_the_last_of_a_blob(
    tmp_path: Path,
) -> None:
    layout = Layout(tmp_path / "incoming", tmp_path / ".processing", tmp_path / "staging")
    ledger = Ledger(layout, Nfs(5.0))

    def item(rel: str, data: bytes, blob_name: str | None = None) -> WorkItem:
        md5 = hashlib.md5(data).digest()
        committed = (len(data), 1_700_000_000_000_000_000)
        return WorkItem(
            "s", "20261130", rel, True, committed=committed, md5=md5, blob_name=blob_name
        )

    # Completions that arrive together go out in one write (and one fsync).
    await asyncio.gather(*(ledger.record(item(f"f{i}.bin", b"%d" % i)) for i in range(20)))
    assert ledger.lines == 20 and ledger.writes <= 2
    path = layout.ledger("20261130", "s")
    with open(path, "ab") as f:
        f.write(b'{"blob": "20261130/s/torn.bin", "pa')  # a crash in the middle of a line
    fresh = Ledger(layout, Nfs(5.0))  # the next run
    await fresh.record(item("f3.bin", b"other bytes"))  # sent again after a late write
    await fresh.record(item("f3.bin", b"other bytes", "20261130/s/f3~2.bin"))
    entries = fresh.read("20261130", "s")
    assert [e.blob for e in entries] == sorted(
        [f"20261130/s/f{i}.bin" for i in range(20)] + ["20261130/s/f3~2.bin"]
    )
    f3 = next(e for e in entries if e.blob == "20261130/s/f3.bin")
    assert f3.size == len(b"other bytes") and f3.md5 == hashlib.md5(b"other bytes").hexdigest()
    assert f3.path == "f3.bin" and f3.source_mtime == "2023-11-14T22:13:20.000000Z"
    assert path.read_bytes().count(b"\n") == 20 + 1 + 2  # the torn line was ended


def test_a_file_is_not_done_until_its_ledger_line_is_written(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = start_session(running, "ledger")
    # The ledger's folder on a read-only mount: every append fails, as on a failing NFS write.
    folder = settings.nfs_processing_root / "_ledgers" / date
    folder.mkdir(parents=True)
    container = azurite.container(settings.azure_container)
    with bind_mount(folder, folder, read_only=True):
        write_file(settings.nfs_incoming_dir / "ledger" / "a.bin", b"committed first")
        status = wait_for(
            lambda: (s := running.get("/v1/status").json())["retrying"] and s, timeout=20
        )
        assert "cannot write the ledger" in status["last_error"]
        assert container.get_blob_client(f"{date}/ledger/a.bin").exists()  # committed...
        claimed = settings.nfs_processing_root / date / "ledger" / "a.bin"
        assert claimed.exists()  # ...but not marked done
        assert running.get("/v1/sessions/ledger").json()["uploaded"] == 0
        running.post("/v1/watch/stop")
        assert running.get("/v1/sessions/ledger").json()["drained"] is False
    manifest = wait_manifest(container, date, "ledger")
    assert [f["blob"] for f in manifest["files"]] == [f"{date}/ledger/a.bin"]
    assert manifest["complete"] is True


async def test_a_manifest_line_from_the_future_is_not_the_ledgers(tmp_path: Path) -> None:
    """The ledger says which end's manifest was written last, and no older end's is written
    over it; a line claiming a generation far ahead (anyone who can write the share) would
    keep every later manifest of the session from being written. It is skipped.

    Found attacking issue 21's change.
    """
    layout = Layout(tmp_path / "incoming", tmp_path / ".processing", tmp_path / "staging")
    ledger = Ledger(layout, Nfs(5.0))
    await ledger.record_written("20261204", "s", 1_764_800_000_000_000)
    path = layout.ledger("20261204", "s")
    with open(path, "ab") as f:
        f.write(b'{"manifest": {"generation": 99999999999999999999}}\n')
    assert ledger.read_all("20261204", "s").written == 1_764_800_000_000_000
