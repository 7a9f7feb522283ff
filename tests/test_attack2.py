"""Attack review of the security, uplink, cloud and speed work: each test reproduces one finding
(it fails on the code it was written against, and passes once the finding is fixed)."""

import hashlib
import os
from typing import Any

import pytest

from nfs_watcher_uploader.blob.block_ids import block_id

from .helpers import Azurite, blob_bytes, wait_for, write_file

MIB = 1024 * 1024


# --- bandwidth: absurd values --------------------------------------------------------------


@pytest.mark.parametrize(
    "limit", ["9" * 400, int("9" * 400), "9" * 310 + "T"], ids=["string", "integer", "with-unit"]
)
def test_an_absurdly_large_bandwidth_override_is_a_422_not_a_500(
    service_factory: Any, settings_factory: Any, limit: str | int
) -> None:
    """parse_rate does int(float(...)): a number of more than ~309 digits is float('inf'), and
    int(inf) raises OverflowError, which pydantic does not turn into a validation error."""
    running = service_factory(settings_factory(bandwidth_limit=3 * MIB))
    before = running.get("/v1/bandwidth").json()
    r = running.client.put("/v1/bandwidth", json={"limit": limit})
    assert r.status_code == 422, r.text
    assert "limit" in r.json()["detail"]
    assert running.get("/v1/bandwidth").json() == before
    assert not (running.settings.nfs_processing_root / "bandwidth.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        b'{"limit": "' + b"9" * 400 + b'"}',  # OverflowError in parse_rate
        b"[" * 200_000,  # RecursionError in json.loads
    ],
    ids=["huge-number", "deeply-nested"],
)
def test_a_damaged_bandwidth_file_never_stops_the_service(
    service_factory: Any, settings_factory: Any, content: bytes
) -> None:
    """Bandwidth.load catches ValueError, KeyError and TypeError only; _until_ok retries only
    OSError and RetryableError: anything else ends the service loop, so it never gets ready
    (and the liveness probe fails: a restart loop)."""
    settings = settings_factory(bandwidth_limit=3 * MIB)
    state = settings.nfs_processing_root / "bandwidth.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(content)
    running = service_factory(settings, wait_ready=False)
    wait_for(
        lambda: running.get("/readyz").status_code == 200,
        timeout=30,
        what="readyz 200 despite a damaged bandwidth.json",
    )
    assert running.get("/v1/bandwidth").json()["source"] == "setting"
    assert any(p.name.startswith("bandwidth.json.damaged-") for p in state.parent.iterdir())


# --- resumable blocks: a planted uncommitted block --------------------------------------------


def test_a_planted_uncommitted_block_never_ends_up_in_the_blob(
    service_factory: Any, settings_factory: Any, azurite: Azurite, container_name: str
) -> None:
    """Block ids were `index-md5` of the block's bytes, and an uncommitted block with the
    expected id and size was trusted to hold those bytes (storage._put_blocks, early.offer). But
    a block id is only a label: anyone who may write to the container (a leaked `cw` SAS) can
    stage other bytes under it before the file goes up. The commit then takes those bytes, and
    the blob's Content-MD5 (set from NFS, never checked by Azure for a block list) still claims
    the right ones, so `verify` without --download says OK."""
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


# --- durable jobs: a damaged outbox or report job -------------------------------------------


def _drain_one_session(running: Any, settings: Any, name: str) -> str:
    date = running.post("/v1/watch/start", json={"session_name": name}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / name / "a.bin", b"a" * 1000)
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=30, what="upload")
    assert running.post("/v1/watch/stop").status_code == 200
    return date


@pytest.mark.parametrize(
    "job",
    [b'{"id": "damaged"}', b'{"id": "damaged", "created": "yesterday", "event": {}}'],
    ids=["no-event", "bad-created"],
)
def test_a_damaged_outbox_event_holds_up_no_other_event(
    service_factory: Any, settings_factory: Any, job: bytes
) -> None:
    """Webhooks.run reads job["event"]["type"] unguarded, and JobFiles._load sorts by
    float(job["created"]) outside its try: one outbox file that is JSON with the right id but
    not the right fields ends the delivery task (and with it the service loop: /healthz 503, a
    restart loop that never delivers another event)."""
    from .webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver().start()
    try:
        settings = settings_factory(webhook_url=f"{receiver.url}/hook")
        outbox = settings.nfs_processing_root / "_outbox"
        outbox.mkdir(parents=True)
        (outbox / "damaged.json").write_bytes(job)
        running = service_factory(settings)
        _drain_one_session(running, settings, "after")
        wait_for(
            lambda: any(d.event["type"] == "session.drained" for d in receiver.accepted()),
            timeout=30,
            what="the session.drained event of a later session",
        )
        assert running.get("/healthz").status_code == 200
    finally:
        receiver.stop()


def test_a_damaged_report_job_holds_up_no_other_manifest(
    service_factory: Any, settings_factory: Any, azurite: Azurite, container_name: str
) -> None:
    """Reports.run catches a failing job, then logs job["session"], which raises KeyError for
    a job without one: the report task ends, and no session's manifest is written again."""
    settings = settings_factory()
    reports = settings.nfs_processing_root / "_reports"
    reports.mkdir(parents=True)
    (reports / "damaged.json").write_bytes(b'{"id": "damaged", "created": 0}')
    running = service_factory(settings)
    date = _drain_one_session(running, settings, "after")
    container = azurite.container(container_name)
    wait_for(
        lambda: blob_bytes(container, f"{date}/after.manifest.json"),
        timeout=30,
        what="the manifest of a later session",
    )
    assert running.get("/healthz").status_code == 200


def test_a_flood_of_parked_files_never_drops_the_session_event(
    service_factory: Any,
    settings_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anyone who can write into incoming can fill the outbox with `file.parked` events (names
    Azure refuses, such as ones ending in '.') while the receiver is unreachable; once it holds
    OUTBOX_MAX events, Webhooks.emit drops every new one, the session's own end event
    included, the one event a consumer waits for. (OUTBOX_MAX is lowered here from 10,000.)"""
    from nfs_watcher_uploader.cloud import webhooks

    monkeypatch.setattr(webhooks, "OUTBOX_MAX", 3)
    from .helpers import free_port

    settings = settings_factory(
        webhook_url=f"http://127.0.0.1:{free_port()}/hook", drain_timeout_s=1.0
    )
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "flood"})
    for i in range(3):
        write_file(settings.nfs_incoming_dir / "flood" / f"bad{i}.", b"x")
    wait_for(lambda: running.service.pipeline.stats.parked == 3, timeout=30, what="3 parked")
    assert running.post("/v1/watch/stop").status_code == 200
    outbox = settings.nfs_processing_root / "_outbox"

    def ended() -> bool:
        session = running.service.sessions.by_name["flood"]
        reports = settings.nfs_processing_root / "_reports"
        # The report job is removed only after its event was emitted (or dropped).
        return session.state == "drain_timed_out" and not any(reports.glob("*.json"))

    wait_for(ended, timeout=30, what="the session to end and be reported")
    types = [p.read_text() for p in outbox.glob("*.json")]
    assert any("session.drain_timed_out" in t for t in types), (
        f"dropped: {running.service.delivery.webhooks.dropped}"
    )
