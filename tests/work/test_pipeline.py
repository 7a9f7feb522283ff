"""The pipeline never blocks a worker on its own queue."""

import time
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs.copying import Staged, copy_and_hash
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    until,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
def test_a_late_write_with_the_queue_full_never_blocks_the_worker(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A worker that finds its file written to after the upload re-queues it with
    `await queue.put(...)`. With the queue full, it waits for a worker to take something off
    the queue, and it is that worker (worker_concurrency=1 here; with N workers, N late writes
    at once). Nothing is uploaded any more; only the liveness probe restarts the process.

    Should: a.bin (whole, with its late write) and b.bin are both uploaded.

    Finding adversary-review-I (second adversarial review, issue 10).
    """
    state: dict[str, Any] = {}

    def late_copy(src: Path, dst: Path, *args: Any) -> Staged:
        copied = copy_and_hash(src, dst, *args)
        if src.name == "a.bin" and "late" not in state:
            state["late"] = True
            queue = state["running"].service.pipeline.queue
            deadline = time.monotonic() + 10
            while not queue.full() and time.monotonic() < deadline:  # b.bin queued behind
                time.sleep(0.01)
            with open(src, "ab") as f:  # the recorder writes again after the claim
                f.write(b" and a late write")
        return copied

    settings = settings_factory(worker_concurrency=1, max_queue_size=1)
    running = service_factory(settings, copy=late_copy)
    state["running"] = running
    date = running.post("/v1/watch/start", json={"session_name": "full"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "full"
    write_file(incoming / "a.bin", b"a recording")
    wait_for(lambda: "late" in state, what="a.bin being copied")
    write_file(incoming / "b.bin", b"another recording")
    container = azurite.container(settings.azure_container)
    until(
        lambda: (
            blob_bytes(container, f"{date}/full/a.bin") == b"a recording and a late write"
            and blob_bytes(container, f"{date}/full/b.bin") == b"another recording"
        ),
        15,
        lambda: (
            f"a.bin={blob_bytes(container, f'{date}/full/a.bin')!r}, "
            f"b.bin={blob_bytes(container, f'{date}/full/b.bin')!r}; the worker is stuck in "
            f"queue.put (in_flight={running.service.pipeline.in_flight}, "
            f"queued={running.service.pipeline.queued})"
        ),
    )
