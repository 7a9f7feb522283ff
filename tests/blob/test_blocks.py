"""Files sent in blocks resume without sending a block twice, and every block permit comes back."""

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    blob_bytes,
    block_permits_free,
    wait_for,
    write_file,
)
from tests.support.relay import Relay, through


def _create(container: Any) -> bool:
    try:
        container.create_container()
    except Exception:  # still being deleted (409), or already there
        return container.exists()
    return True


MIB = 1024 * 1024


@pytest.mark.adversarial
def test_block_permits_come_back_after_failing_uploads(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """The container deleted under multi-block uploads, then recreated: every block permit is
    returned, and later multi-block files still go up.

    Finding adversary-4 (first adversarial review, issue 10).
    """
    settings = settings_factory(
        azure_max_block_size=64 * 1024,
        azure_max_single_put_size=64 * 1024,
        retry_max_s=0.5,
        # Slow enough that no file is committed before the container is deleted under it (one
        # committed before would be deleted with it, and rightly never sent again).
        bandwidth_limit=1024 * 1024,
    )
    running = service_factory(settings)
    storage = running.service.storage
    full = block_permits_free(storage)
    date = running.post("/v1/watch/start", json={"session_name": "blocks"}).json()["date_prefix"]
    container = azurite.container(settings.azure_container)
    incoming = settings.nfs_incoming_dir / "blocks"
    first = {f"f{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(4)}
    for name, data in first.items():
        write_file(incoming / name, data)
    wait_for(lambda: running.get("/v1/status").json()["in_flight"] > 0, what="uploads running")
    container.delete_container()
    wait_for(lambda: running.get("/v1/status").json()["retrying"] > 0, what="failing uploads")
    wait_for(lambda: _create(container), timeout=60, what="container recreated")
    later = {f"g{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(3)}
    for name, data in later.items():
        write_file(incoming / name, data)
    expected = first | later
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/blocks/{n}") == d for n, d in expected.items()),
        timeout=90,
    )
    wait_for(lambda: running.get("/v1/status").json()["in_flight"] == 0)
    assert block_permits_free(storage) == full


@pytest.mark.slow
def test_a_killed_large_upload_resumes_without_sending_its_blocks_again(
    tmp_path: Path, azurite: Azurite, container_name: str, relay: Relay
) -> None:
    """256 MiB under a 32 MiB/s cap, SIGKILL at ~60 %, restart: the blocks Azure already holds
    are not sent again; all the bytes that reached storage are at most 1.15 x the file."""
    size = 256 * MIB
    settings = through(relay, azurite, tmp_path, container_name, bandwidth_limit=32 * MIB)
    proc = ServiceProcess(settings, tmp_path / "service.log")
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "big"}).json()["date_prefix"]
    data = os.urandom(size)
    before = relay.total  # start-up requests
    write_file(settings.nfs_incoming_dir / "big" / "large.bin", data)
    wait_for(lambda: relay.total - before >= 0.6 * size, timeout=120, interval=0.01)
    assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
    at_kill = relay.total - before
    proc.start()
    container = azurite.container(container_name)
    blob = f"{date}/big/large.bin"
    wait_for(lambda: container.get_blob_client(blob).exists(), timeout=120, interval=0.2)
    assert blob_bytes(container, blob) == data
    sent = relay.total - before
    print(f"\nresume: killed at {at_kill / size:.2f} x the file; {sent / size:.3f} x sent in all")
    assert "blocks were in storage from an earlier attempt" in proc.log.read_text()
    assert sent <= 1.15 * size
    proc.signal(signal.SIGTERM)
