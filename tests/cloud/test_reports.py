"""A session's manifest lists every committed blob once, says whether the session is complete, and
is right after crashes."""

import asyncio
import hashlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nfs_watcher_uploader.errors import PermanentError
from nfs_watcher_uploader.nfs.copying import Staged
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.sessions.session import Session
from tests.support.cloud import (
    blobs_of,
    drain_one_session,
    manifest_of,
    run_verify,
    start_session,
    wait_manifest,
)
from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    on_service_loop,
    session_view,
    wait_for,
    write_file,
)
from tests.support.webhook_receiver import WebhookReceiver


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
        # Drained already when the restarted service sent the last file before the stop came.
        assert c.post("/v1/watch/stop").json()["state"] in {"draining", "drained"}
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


@pytest.mark.adversarial
def test_a_damaged_report_job_holds_up_no_other_manifest(
    service_factory: Any, settings_factory: Any, azurite: Azurite, container_name: str
) -> None:
    """Reports.run catches a failing job, then logs job["session"], which raises KeyError for
    a job without one: the report task ends, and no session's manifest is written again.

    Finding attack2-5 (attack review of issues 12 to 16).
    """
    settings = settings_factory()
    reports = settings.nfs_processing_root / "_reports"
    reports.mkdir(parents=True)
    (reports / "damaged.json").write_bytes(b'{"id": "damaged", "created": 0}')
    running = service_factory(settings)
    date = drain_one_session(running, settings, "after")
    container = azurite.container(container_name)
    wait_for(
        lambda: blob_bytes(container, f"{date}/after.manifest.json"),
        timeout=30,
        what="the manifest of a later session",
    )
    assert running.get("/healthz").status_code == 200


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
    date = start_session(running, "park")
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


def test_the_manifest_matches_the_blobs_after_crashes_in_the_middle(
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


def test_manifest_off_keeps_no_ledger_and_writes_no_manifest(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(manifest="off")
    running = service_factory(settings)
    date = start_session(running, "quiet")
    write_file(settings.nfs_incoming_dir / "quiet" / "a.bin", b"a")
    wait_for(lambda: running.get("/v1/sessions/quiet").json()["uploaded"] == 1, timeout=20)
    running.post("/v1/watch/stop")
    wait_for(lambda: running.get("/v1/sessions/quiet").json()["drained"], timeout=20)
    container = azurite.container(settings.azure_container)
    assert [b.name for b in container.list_blobs()] == [f"{date}/quiet/a.bin"]
    assert not (settings.nfs_processing_root / "_ledgers").exists()
    assert not list((settings.nfs_processing_root / "_reports").glob("*"))


@pytest.mark.adversarial
async def test_an_older_end_never_overwrites_a_newer_manifest(
    settings_factory: Any, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session drains while the uplink is down (its report backs off), is started again the
    same day, stopped, and times out with a file left. When the uplink returns, the newer end
    wrote `complete: false`, then the older job, due later, wrote `complete: true` over it.

    Issue 21, finding 3.
    """
    settings = settings_factory(retry_base_s=2.0, retry_max_s=4.0)
    service = Service(settings)
    await service.storage.connect()
    await service.sessions.load()
    down, attempts = [True], [0]
    take = service.meter.take

    async def through_the_uplink(size: int, priority: float) -> None:
        if down[0]:
            attempts[0] += 1
            raise aiohttp.ClientConnectionError("the uplink is down")
        await take(size, priority)

    monkeypatch.setattr(service.meter, "take", through_the_uplink)
    reports = asyncio.create_task(service.reports.run())
    container = azurite.container(settings.azure_container)
    jobs = settings.nfs_processing_root / "_reports"

    async def until(condition: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while not await asyncio.to_thread(condition):
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.05)

    def prepare(name: str, date: str) -> None:
        (settings.nfs_incoming_dir / name).mkdir(exist_ok=True)

    try:
        session = await service.sessions.start("again", prepare)
        await service.sessions.stop()
        await service.sessions.finish(session, "drained")  # its report fails: backs off
        await until(lambda: attempts[0] > 0, "the first report tried while the uplink is down")
        down[0] = False
        await service.sessions.start("again", prepare)  # the same day, the same manifest
        await service.sessions.stop()
        await service.sessions.finish(session, "drain_timed_out")

        def newer_written() -> bool:
            manifest = manifest_of(container, session.date_prefix, "again")
            return manifest is not None and manifest["state"] == "drain_timed_out"

        await until(newer_written, "the newer end's manifest")
        await until(lambda: not list(jobs.glob("*.json")), "every report job done")
        manifest = manifest_of(container, session.date_prefix, "again")
        assert manifest is not None
        assert (manifest["state"], manifest["complete"]) == ("drain_timed_out", False)
    finally:
        reports.cancel()
        await asyncio.gather(reports, return_exceptions=True)
        await service.storage.close()


@pytest.mark.adversarial
def test_a_late_write_after_the_drain_reopens_the_session_report(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """GC found a file written to after its upload (its writer paused past the minimum age)
    and sent it again, whole, over its blob; but the session had drained: its manifest kept
    the old size and MD5, and `verify` failed a session the service called drained.

    Should: the session drains again and its manifest is written anew, announced by a
    `session.updated` event; `verify` passes.

    Issue 21, finding 4.
    """
    receiver = WebhookReceiver().start()
    try:
        settings = settings_factory(webhook_url=f"{receiver.url}/hook", gc_interval_s=3600.0)
        running = service_factory(settings)
        date = start_session(running, "late")
        write_file(settings.nfs_incoming_dir / "late" / "rec.bin", b"first bytes")
        wait_for(lambda: session_view(running, "late")["uploaded"] == 1, what="uploaded")
        running.post("/v1/watch/stop")
        container = azurite.container(settings.azure_container)
        assert wait_manifest(container, date, "late", complete=True)["files"][0]["size"] == 11
        completed = settings.nfs_processing_root / "_completed" / date / "late" / "rec.bin"
        with open(completed, "ab") as writer:  # the recorder still had it open
            writer.write(b" and a late write")
        on_service_loop(running, running.service.gc.sweep_once())
        whole = b"first bytes and a late write"

        def rewritten() -> dict[str, Any] | None:
            manifest = manifest_of(container, date, "late")
            files = manifest["files"] if manifest else []
            return manifest if files and files[0]["size"] == len(whole) else None

        manifest = wait_for(rewritten, timeout=30, what="the manifest written anew")
        assert manifest is not None
        assert manifest["files"][0]["md5"] == hashlib.md5(whole).hexdigest()
        assert manifest["complete"] is True and manifest["state"] == "drained"
        assert blob_bytes(container, f"{date}/late/rec.bin") == whole
        updated = wait_for(
            lambda: [d.event for d in receiver.accepted() if d.event["type"] == "session.updated"],
            what="a session.updated event",
        )
        assert updated[0]["data"]["session"] == "late" and updated[0]["data"]["complete"]
        result = run_verify(settings, f"{date}/late")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        receiver.stop()


def test_an_end_is_newer_than_the_last_one_recorded_even_on_a_clock_that_is_behind(
    settings_factory: Any,
) -> None:
    """With replicas, the last end's generation comes from the shared state, written by a
    leader whose clock may be ahead of this one's: the next end is still the newer."""
    service = Service(settings_factory(), clock=lambda: 1_000.0)
    ahead = 5_000_000_000_000_000
    session = Session("s", "20261204", "draining", 1.0, 2.0, generation=ahead, updated=True)
    job = service.reports.job_for(session, "drained")
    assert job["generation"] == ahead + 1
    assert job["event"] == "session.updated"
