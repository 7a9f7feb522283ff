"""A share switched back from replicas to one (README "Running N replicas": every replica
stopped, `.processing/coordination` removed, one started with APP_COORDINATION=none): what the
replicas left in their owner trees is taken over, and the manifest counts what they sent."""

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import Azurite, RunningService, blob_bytes, until, write_file


def test_one_replica_takes_over_what_replicas_left_and_its_manifest_counts_their_files(
    settings: Settings,
    azurite: Azurite,
    container_name: str,
    service_factory: Callable[..., RunningService],
) -> None:
    date, session = datetime.now(UTC).strftime("%Y%m%d"), "rec"
    member = settings.nfs_processing_root / "owners" / str(uuid.uuid4())
    # One file a replica had claimed and not sent; one it had sent (its blob and ledger line).
    left = write_file(member / date / session / "cam1" / "left.bin", b"left behind" * 1000)
    sent = b"sent by a replica" * 1000
    container = azurite.container(container_name)
    container.create_container()
    container.upload_blob(f"{date}/{session}/sent.bin", sent)
    line = {
        "blob": f"{date}/{session}/sent.bin",
        "path": "sent.bin",
        "size": len(sent),
        "md5": hashlib.md5(sent).hexdigest(),
        "source_mtime": "2026-01-01T00:00:00Z",
        "uploaded_at": "2026-01-01T00:00:01Z",
    }
    write_file(member / "_ledgers" / date / f"{session}.jsonl", json.dumps(line).encode() + b"\n")

    running = service_factory(settings)

    blob = f"{date}/{session}/cam1/left.bin"
    until(
        lambda: blob_bytes(container, blob) == b"left behind" * 1000,
        30,
        lambda: "the file left behind not uploaded",
    )
    assert not left.exists()
    view = f"/v1/sessions/{session}"
    # Counted from every ledger (the blob is in storage a moment before its count).
    until(
        lambda: running.get(view).json()["uploaded"] == 2,
        10,
        lambda: f"not counted: {running.get(view).json()}",
    )
    running.post("/v1/watch/stop")  # the session found through files resumes active
    until(
        lambda: running.get(view).json()["state"] == "drained",
        60,
        lambda: f"not drained: {running.get(view).json()}",
    )
    name = f"{date}/{session}.manifest.json"
    until(lambda: blob_bytes(container, name) is not None, 30, lambda: "no manifest")
    manifest = json.loads(blob_bytes(container, name) or b"{}")
    assert sorted(f["blob"] for f in manifest["files"]) == [blob, f"{date}/{session}/sent.bin"]
    assert manifest["complete"] is True
