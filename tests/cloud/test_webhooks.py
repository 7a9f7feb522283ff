"""Events are signed, delivered at least once across restarts, never hold up an upload, and a
session's end is never dropped."""

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.cloud.webhooks import DELIVERY_TIMEOUT_S, sign
from tests.support.cloud import drain_one_session, wait_manifest
from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    make_settings,
    wait_for,
    write_file,
)
from tests.support.webhook_receiver import SilentReceiver, WebhookReceiver

SECRET = "webhook-secret-not-for-logs"


TOKEN = "url-token-not-for-logs"


def _a_later_session_is_told(running: Any, settings: Any, receiver: WebhookReceiver) -> None:
    """A session drains after whatever the test planted, and its event is delivered."""
    drain_one_session(running, settings, "after")
    wait_for(
        lambda: any(d.event["type"] == "session.drained" for d in receiver.accepted()),
        timeout=30,
        what="the session.drained event of a later session",
    )


def _types(receiver: WebhookReceiver) -> Counter[str]:
    return Counter(d.event["type"] for d in receiver.accepted())


def _scenario(
    proc: ServiceProcess,
    receiver: WebhookReceiver,
    azurite: Azurite,
    container_name: str,
    incoming: Path,
) -> None:
    container = azurite.container(container_name)
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "hooks"}).json()["date_prefix"]
    container.upload_blob(f"{date}/hooks/taken.bin", b"someone else's bytes")
    write_file(incoming / "hooks" / "taken.bin", b"our bytes")  # uploaded as taken~2.bin
    write_file(incoming / "hooks" / "bad-name.", b"a name Azure refuses")  # parked
    write_file(incoming / "hooks" / "fine.bin", b"fine")
    wait_for(
        lambda: _types(receiver) >= Counter({"file.parked": 1, "file.conflict_renamed": 1}),
        timeout=60,
        what="file events",
    )
    with proc.client as c:
        c.post("/v1/watch/stop")  # a parked file: it times out
    wait_for(lambda: _types(receiver)["session.drain_timed_out"] == 1, timeout=60)

    # The receiver goes down; a second session drains meanwhile, and the service restarts.
    receiver.stop()
    with proc.client as c:
        c.post("/v1/watch/start", json={"session_name": "hooks2"})
        write_file(incoming / "hooks2" / "a.bin", b"a")
        wait_for(lambda: c.get("/v1/sessions/hooks2").json()["uploaded"] == 1, timeout=30)
        c.post("/v1/watch/stop")
    wait_manifest(container, date, "hooks2")
    outbox = proc.settings.nfs_processing_root / "_outbox"
    wait_for(lambda: list(outbox.glob("*.json")), timeout=30, what="the event in the outbox")
    assert proc.signal(signal.SIGTERM) == -signal.SIGTERM
    proc.start()
    failed = proc.log.read_text().count("Webhook session.drained")
    wait_for(
        lambda: proc.log.read_text().count("Webhook session.drained") > failed,
        timeout=30,
        what="a failed delivery after the restart",
    )
    receiver.start()  # back, on the same port
    wait_for(lambda: _types(receiver)["session.drained"] == 1, timeout=60)
    wait_for(lambda: not list(outbox.glob("*.json")), timeout=30, what="an empty outbox")

    deliveries = receiver.deliveries
    assert [d.status for d in deliveries[:2]] == [500, 500]
    assert all(d.signed_with(SECRET.encode()) for d in deliveries)
    assert all(d.path == f"/hook?token={TOKEN}" for d in deliveries)
    accepted = receiver.accepted()
    ids = [d.event["id"] for d in accepted]
    assert len(ids) == len(set(ids)), "an event was accepted twice"
    assert {d.event["id"] for d in deliveries[:2]} <= set(ids)  # refused, then retried
    assert all(d.headers["X-Event-Id"] == d.event["id"] for d in accepted)
    assert _types(receiver) == Counter(
        {
            "file.parked": 1,
            "file.conflict_renamed": 1,
            "session.drain_timed_out": 1,
            "session.drained": 1,
        }
    )
    by_type = {d.event["type"]: d.event for d in accepted}
    parked = by_type["file.parked"]["data"]
    assert parked["path"] == "bad-name." and parked["session"] == "hooks"
    assert "must not end with" in parked["reason"]
    renamed = by_type["file.conflict_renamed"]["data"]
    assert renamed["wanted"] == f"{date}/hooks/taken.bin"
    assert renamed["blob_name"] == f"{date}/hooks/taken~2.bin"
    timed_out = by_type["session.drain_timed_out"]["data"]
    assert timed_out["complete"] is False and timed_out["parked"] == 1
    assert timed_out["manifest"] == f"{date}/hooks.manifest.json"
    drained = by_type["session.drained"]["data"]
    assert drained["complete"] is True and drained["files"] == 1
    assert drained["manifest"] == f"{date}/hooks2.manifest.json"
    assert all(e["source_id"] for e in by_type.values())
    proc.signal(signal.SIGTERM)


@pytest.mark.adversarial
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
    restart loop that never delivers another event).

    Finding attack2-4 (attack review of issues 12 to 16).
    """
    from tests.support.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver().start()
    try:
        settings = settings_factory(webhook_url=f"{receiver.url}/hook")
        outbox = settings.nfs_processing_root / "_outbox"
        outbox.mkdir(parents=True)
        (outbox / "damaged.json").write_bytes(job)
        running = service_factory(settings)
        _a_later_session_is_told(running, settings, receiver)
        assert running.get("/healthz").status_code == 200
    finally:
        receiver.stop()


@pytest.mark.adversarial
def test_a_flood_of_parked_files_never_drops_the_session_event(
    service_factory: Any,
    settings_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anyone who can write into incoming can fill the outbox with `file.parked` events (names
    Azure refuses, such as ones ending in '.') while the receiver is unreachable; once it holds
    OUTBOX_MAX events, Webhooks.emit drops every new one, the session's own end event
    included, the one event a consumer waits for. (OUTBOX_MAX is lowered here from 10,000.)

    Finding attack2-6 (attack review of issues 12 to 16).
    """
    from nfs_watcher_uploader.cloud import webhooks

    monkeypatch.setattr(webhooks, "OUTBOX_MAX", 3)
    from tests.support.helpers import free_port

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
    reports = settings.nfs_processing_root / "_reports"
    webhooks = running.service.delivery.webhooks

    def reported() -> bool:
        # The session's state changes before its report job is written: wait for the job to
        # be done (removed only after its event was emitted, or dropped).
        session = running.service.sessions.by_name["flood"]
        done = session.generation > 0 and not any(reports.glob("*.json"))
        return done or webhooks.dropped > 0

    wait_for(reported, timeout=30, what="the session to end and be reported")
    types = [p.read_text() for p in outbox.glob("*.json")]
    assert any("session.drain_timed_out" in t for t in types), f"dropped: {webhooks.dropped}"


def test_the_signature_matches_githubs_documented_value() -> None:
    # As GitHub documents its X-Hub-Signature-256 for this secret and body.
    assert sign(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_events_are_signed_retried_and_delivered_once_each_across_a_restart(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    receiver = WebhookReceiver(refuse_first=2).start()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        drain_timeout_s=2.0,
        webhook_url=f"{receiver.url}/hook?token={TOKEN}",
        webhook_secret=SECRET,
    )
    proc = ServiceProcess(settings, tmp_path / "service.log")
    try:
        _scenario(proc, receiver, azurite, container_name, settings.nfs_incoming_dir)
    finally:
        receiver.stop()
        if proc.proc is not None:
            proc.proc.kill()
            proc.proc.wait()
    log = proc.log.read_text()
    assert SECRET not in log and TOKEN not in log
    assert "Webhook session.drained" in log  # the failed attempts were logged, without them


def test_a_webhook_that_hangs_never_holds_up_an_upload(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    silent = SilentReceiver()
    try:
        settings = settings_factory(webhook_url=silent.url)
        running = service_factory(settings)
        r = running.post("/v1/watch/start", json={"session_name": "hang"})
        date = r.json()["date_prefix"]
        incoming = settings.nfs_incoming_dir / "hang"
        container = azurite.container(settings.azure_container)
        taken = f"{date}/hang/taken-0.bin"
        container.upload_blob(taken, b"other")
        write_file(incoming / "taken-0.bin", b"ours")  # an event, whose delivery hangs
        webhooks = running.service.delivery.webhooks
        wait_for(lambda: webhooks.pending == 1, timeout=20)
        started = time.monotonic()
        for i in range(30):
            write_file(incoming / f"f{i:02d}.bin", b"%d" % i)
        running.post("/v1/watch/stop")
        manifest = wait_manifest(container, date, "hang")
        # Everything went up while the first delivery was still waiting for its answer.
        assert time.monotonic() - started < DELIVERY_TIMEOUT_S
        assert manifest["totals"]["files"] == 31
        # The session's event is emitted once its manifest is written: it comes just after.
        wait_for(lambda: webhooks.pending == 2, timeout=10, what="the session's event pending")
        assert webhooks.delivered == 0
        metrics = running.get("/metrics").text
        assert any(
            line.startswith("webhook_events_pending") and line.endswith(" 2.0")
            for line in metrics.splitlines()
        ), metrics
    finally:
        silent.close()


@pytest.mark.adversarial
@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64], ids=["unsigned", "forged"])
def test_an_event_planted_in_the_outbox_is_never_signed_and_sent(
    service_factory: Any, settings_factory: Any, signature: str | None
) -> None:
    """The outbox on the share was trusted: anyone who can write it had any event of their
    own signed with APP_WEBHOOK_SECRET and delivered, so a receiver that checks the signature
    took it as the service's (here a `session.drained` for a session that never was).

    Issue 21 review, finding 4.
    """
    receiver = WebhookReceiver().start()
    try:
        settings = settings_factory(webhook_url=f"{receiver.url}/hook", webhook_secret=SECRET)
        event = {
            "id": "planted",
            "type": "session.drained",
            "created_at": "2026-12-04T00:00:00Z",
            "source_id": settings.source_id,
            "data": {"session": "never", "complete": True},
        }
        job: dict[str, Any] = {"id": "planted", "created": 1.0, "event": event}
        if signature is not None:
            job["signature"] = signature
        write_file(
            settings.nfs_processing_root / "_outbox" / "planted.json", json.dumps(job).encode()
        )
        running = service_factory(settings)
        _a_later_session_is_told(running, settings, receiver)
        assert [d.event["id"] for d in receiver.accepted() if d.event["id"] == "planted"] == []
        aside = settings.nfs_processing_root / "_set_aside" / "_outbox"
        assert [p.name.split(".unusable-")[0] for p in aside.iterdir()] == ["planted.json"]
    finally:
        receiver.stop()
