"""What a consumer in the cloud relies on (issue #14): blob properties, the session manifest
after crashes, parked files and retries, on real files, a real Azurite, over HTTP."""

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from pydantic import ValidationError

from nfs_watcher_uploader.blobinfo import iso_utc_ns, uploader_version
from nfs_watcher_uploader.config import AccessTier, Settings, parse_tags
from nfs_watcher_uploader.errors import PermanentError
from nfs_watcher_uploader.fsops import Nfs, Staged
from nfs_watcher_uploader.layout import Layout
from nfs_watcher_uploader.ledger import Ledger
from nfs_watcher_uploader.main import load_settings
from nfs_watcher_uploader.models import WorkItem
from nfs_watcher_uploader.sessions import Session
from nfs_watcher_uploader.webhooks import Webhooks

from .helpers import (
    ROOT,
    Azurite,
    RunningService,
    ServiceProcess,
    make_settings,
    service_env,
    wait_for,
    write_file,
)


def manifest_of(container: ContainerClient, date: str, session: str) -> dict[str, Any] | None:
    blob = container.get_blob_client(f"{date}/{session}.manifest.json")
    if not blob.exists():
        return None
    return json.loads(blob.download_blob().readall())


def wait_manifest(
    container: ContainerClient, date: str, session: str, complete: bool | None = None
) -> dict[str, Any]:
    """The session's manifest once it is there (and says `complete`, if given)."""

    def ready() -> dict[str, Any] | None:
        m = manifest_of(container, date, session)
        return m if m is not None and complete in (None, m["complete"]) else None

    found = wait_for(ready, timeout=120, what=f"the manifest of {session}")
    assert found is not None
    return found


def blobs_of(container: ContainerClient, prefix: str) -> dict[str, bytes]:
    return {
        b.name: container.download_blob(b.name).readall()
        for b in container.list_blobs(name_starts_with=prefix)
    }


def start(running: RunningService, name: str) -> str:
    r = running.post("/v1/watch/start", json={"session_name": name})
    assert r.status_code == 200, r.text
    return r.json()["date_prefix"]


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
    date = start(running, "props")
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
    date = start(running, "plain")
    write_file(settings.nfs_incoming_dir / "plain" / "a.txt", b"a")
    container = azurite.container(settings.azure_container)
    blob = container.get_blob_client(f"{date}/plain/a.txt")
    wait_for(blob.exists, timeout=20)
    props = blob.get_blob_properties()
    assert props.tag_count in (None, 0) and blob.get_blob_tags() == {}
    assert props.content_settings.content_type == "text/plain"


def test_complete_is_false_with_a_parked_file_and_true_after_its_retry(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    refuse = {"refused.bin"}

    def refuse_once(staged: Path, copied: Staged) -> None:
        if staged.name in refuse:
            refuse.discard(staged.name)
            raise PermanentError("injected: storage refused this file")

    settings = settings_factory(drain_timeout_s=1.0)
    running = service_factory(settings, on_staged=refuse_once)
    date = start(running, "park")
    incoming = settings.nfs_incoming_dir / "park"
    write_file(incoming / "good.bin", b"good")
    write_file(incoming / "refused.bin", b"refused once")
    write_file(incoming / "link", b"")
    os.unlink(incoming / "link")
    os.symlink("/etc/passwd", incoming / "link")
    wait_for(lambda: running.get("/v1/sessions/park").json()["failed"] == 1, timeout=20)
    running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)
    first = wait_manifest(container, date, "park")
    assert first["state"] == "drain_timed_out" and first["complete"] is False
    assert [f["path"] for f in first["files"]] == ["good.bin"]
    assert first["parked"] == [
        {
            "path": "refused.bin",
            "parked_as": "refused.bin",
            "reason": "injected: storage refused this file",
        }
    ]
    assert first["excluded"] == [
        {"path": "link", "reason": "a symbolic link, not a regular file; left in incoming"}
    ]
    assert first["totals"] == {
        "files": 1,
        "bytes": 4,
        "parked": 1,
        "excluded": 1,
        "not_uploaded": 0,
        "dismissed": 0,
    }
    # The retry reopens the session; it drains, and its manifest is written again.
    assert running.post("/v1/files/retry", json={"session_name": "park"}).json() == {"requeued": 1}
    second = wait_manifest(container, date, "park", complete=True)
    assert second["state"] == "drained"
    assert [f["path"] for f in second["files"]] == ["good.bin", "refused.bin"]
    assert second["parked"] == []
    assert second["started_at"] == first["started_at"]
    assert second["stopped_at"] == first["stopped_at"]
    assert second["finished_at"] > first["finished_at"]
    assert running.get("/v1/sessions/park").json()["state"] == "drained"


def test_a_session_cannot_be_named_like_a_manifest(running: RunningService) -> None:
    r = running.post("/v1/watch/start", json={"session_name": "x.Manifest.json"})
    assert r.status_code == 422
    assert "must not end with '.manifest.json'" in r.json()["detail"]
    assert running.get("/v1/status").json()["active_session"] is None


def run_verify(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, configured like the service."""
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader"), "verify", *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manifest_matches_the_blobs_after_crashes_in_the_middle(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        worker_concurrency=4,
        azure_max_block_size=64 * 1024,
        azure_max_single_put_size=64 * 1024,
        gc_interval_s=0.3,
    )
    proc = ServiceProcess(settings, tmp_path / "service.log")
    try:
        _crash_in_the_middle(proc, azurite, container_name, settings)
    finally:
        if proc.proc is not None:
            proc.proc.kill()
            proc.proc.wait()


def _crash_in_the_middle(
    proc: ServiceProcess, azurite: Azurite, container_name: str, settings: Any
) -> None:
    rng = random.Random(14)
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "crash"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "crash"
    container = azurite.container(container_name)
    prefix = f"{date}/crash/"
    expected: dict[str, bytes] = {}

    def drop(batch: int) -> None:
        for i in range(40):
            rel = f"cam{i % 3}/b{batch}-{i:02d}.bin"
            expected[prefix + rel] = data = rng.randbytes(rng.choice([0, 10, 5000, 150_000]))
            write_file(incoming / rel, data)

    for batch in range(3):
        drop(batch)
        # Killed once some of this batch is in storage and while the rest is on its way.
        wait_for(
            lambda b=batch: any(f"/b{b}-" in n for n in blobs_of(container, prefix)), timeout=60
        )
        assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
        proc.start()
    with proc.client as c:
        assert c.post("/v1/watch/stop").json()["state"] == "draining"
    manifest = wait_manifest(container, date, "crash")
    blobs = blobs_of(container, prefix)
    assert blobs == expected
    files = manifest["files"]
    assert [f["blob"] for f in files] == sorted(expected)  # each once, in name order
    for entry in files:
        data = expected[entry["blob"]]
        assert entry["path"] == entry["blob"].removeprefix(prefix)
        assert entry["size"] == len(data)
        assert entry["md5"] == hashlib.md5(data).hexdigest()
    assert manifest["complete"] is True and manifest["state"] == "drained"
    assert manifest["totals"]["files"] == len(expected)
    assert manifest["totals"]["bytes"] == sum(len(d) for d in expected.values())
    proc.signal(signal.SIGTERM)
    result = run_verify(settings, f"{date}/crash")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK   ") == len(expected)
    assert "120 of 120 files checked (size and Content-MD5)" in result.stdout


async def test_ledger_groups_appends_skips_a_torn_line_and_keeps_the_last_of_a_blob(
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


def _settings(**values: Any) -> Settings:
    return Settings.model_validate(
        {"azure_account_url": "http://x/y", "azure_container": "c"} | values
    )


def test_tags_tier_and_source_id_settings_name_the_broken_rule() -> None:
    assert parse_tags("") is None and parse_tags(" , ") is None
    assert parse_tags("session") == {}  # the session tag alone
    assert parse_tags("project=p-14, site=lab 2:north ,x=") == {
        "project": "p-14",
        "site": "lab 2:north",
        "x": "",
    }
    for text, message in (
        ("session=x", "set by the service"),
        ("novalue", "is not key=value"),
        ("=v", "is not key=value"),
        ("k=v!", "only letters, digits"),
        ("k=" + "v" * 257, "values 256"),
        (",".join(f"k{i}=v" for i in range(10)), "at most 9 tags"),
    ):
        with pytest.raises(ValidationError, match=message):
            _settings(azure_tags=text)
    assert _settings(azure_access_tier="archive").azure_access_tier is AccessTier.ARCHIVE
    assert _settings(azure_access_tier="").azure_access_tier is None
    with pytest.raises(ValidationError, match="azure_access_tier"):
        _settings(azure_access_tier="Glacier")
    with pytest.raises(ValidationError, match="printable ASCII"):
        _settings(source_id="jetson\n07")
    assert _settings().source_id == socket.gethostname()


def test_webhook_url_and_secret_stay_out_of_repr_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "https://hooks.example.invalid/h?token=TOPSECRET"
    s = _settings(webhook_url=url, webhook_secret="TOPSECRET2")
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s.model_dump())
    layout = Layout.from_settings(s)
    hooks = Webhooks(s, layout, Nfs(1.0))
    assert "TOPSECRET" not in repr(hooks)
    assert "to=https://hooks.example.invalid " in repr(hooks)
    monkeypatch.setenv("APP_AZURE_ACCOUNT_URL", "http://x/y")
    monkeypatch.setenv("APP_AZURE_CONTAINER", "c")
    monkeypatch.setenv("APP_WEBHOOK_URL", "ftp://user:TOPSECRET@host/")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert "APP_WEBHOOK_URL: Value error, must be an http:// or https:// URL" in str(info.value)
    assert "TOPSECRET" not in str(info.value)


def test_a_file_is_not_done_until_its_ledger_line_is_written(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = start(running, "ledger")
    # A folder where the ledger should be: every append fails, as on a failing NFS write.
    ledger = settings.nfs_processing_root / "_ledgers" / date / "ledger.jsonl"
    ledger.mkdir(parents=True)
    write_file(settings.nfs_incoming_dir / "ledger" / "a.bin", b"committed first")
    container = azurite.container(settings.azure_container)
    status = wait_for(lambda: (s := running.get("/v1/status").json())["retrying"] and s, timeout=20)
    assert "cannot write the ledger" in status["last_error"]
    assert container.get_blob_client(f"{date}/ledger/a.bin").exists()  # committed...
    claimed = settings.nfs_processing_root / date / "ledger" / "a.bin"
    assert claimed.exists()  # ...but not marked done
    assert running.get("/v1/sessions/ledger").json()["uploaded"] == 0
    running.post("/v1/watch/stop")
    assert running.get("/v1/sessions/ledger").json()["drained"] is False
    ledger.rmdir()
    manifest = wait_manifest(container, date, "ledger")
    assert [f["blob"] for f in manifest["files"]] == [f"{date}/ledger/a.bin"]
    assert manifest["complete"] is True


def test_manifest_off_keeps_no_ledger_and_writes_no_manifest(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(manifest="off")
    running = service_factory(settings)
    date = start(running, "quiet")
    write_file(settings.nfs_incoming_dir / "quiet" / "a.bin", b"a")
    wait_for(lambda: running.get("/v1/sessions/quiet").json()["uploaded"] == 1, timeout=20)
    running.post("/v1/watch/stop")
    wait_for(lambda: running.get("/v1/sessions/quiet").json()["drained"], timeout=20)
    container = azurite.container(settings.azure_container)
    assert [b.name for b in container.list_blobs()] == [f"{date}/quiet/a.bin"]
    assert not (settings.nfs_processing_root / "_ledgers").exists()
    assert not list((settings.nfs_processing_root / "_reports").glob("*"))


def test_a_restarted_session_drains_from_its_next_stop_not_from_an_old_reopening() -> None:
    session = Session("s", "20261130", "drain_timed_out", 100.0, 200.0, redrained_at=300.0)
    assert session.drain_start == 300.0
    before = session.restart("20261201", 400.0)
    assert session.redrained_at is None and session.drain_start == 0.0
    session.undo(before)
    assert (session.state, session.drain_start, session.date_prefix) == (
        "drain_timed_out",
        300.0,
        "20261130",
    )
