"""Killed at any moment, the service loses, doubles and corrupts nothing."""

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import (
    Azurite,
    ServiceProcess,
    leftover_files,
    make_settings,
    wait_for,
    write_file,
)

pytestmark = pytest.mark.slow


SIZES = [0, 17, 4096, 64 * 1024, 300 * 1024, 1536 * 1024]


def _blobs(container: Any) -> dict[str, bytes]:
    return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}


def test_a_crash_at_any_moment_loses_and_doubles_nothing(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """SIGKILL (and once SIGTERM) at seeded random points of the pipeline; every file lands."""
    rng = random.Random(20261129)
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        poll_interval_s=0.05,
        worker_concurrency=4,
        azure_max_block_size=128 * 1024,
        azure_max_single_put_size=128 * 1024,
        azure_max_concurrency=4,
        gc_interval_s=0.3,
    )
    proc = ServiceProcess(settings, tmp_path / "service.log")
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "crash"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "crash"
    expected: dict[str, bytes] = {}

    def drop(batch: int, count: int) -> None:
        for i in range(count):
            name = f"b{batch}-{i:03d}.bin"
            data = rng.randbytes(rng.choice(SIZES))
            expected[f"{date}/crash/{name}"] = data
            write_file(incoming / name, data)

    drop(0, 150)
    kills = 0
    for round_ in range(6):
        time.sleep(rng.uniform(0.05, 0.8))  # the kill point: seeded, anywhere in the pipeline
        sig = signal.SIGTERM if round_ == 3 else signal.SIGKILL
        code = proc.signal(sig)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so both end "by signal".
        assert code == -sig
        if sig == signal.SIGTERM:
            assert '"Stopped: ' in proc.log.read_text()  # written only by a graceful shutdown
        kills += 1
        if round_ == 2:
            drop(1, 100)  # files arrive while the service is down
        proc.start()
    container = azurite.container(container_name)
    wait_for(lambda: len(list(container.list_blobs())) >= len(expected), timeout=120)
    assert _blobs(container) == expected
    with proc.client as c:
        assert c.get("/v1/status").json()["active_session"] == "crash"
    wait_for(lambda: not leftover_files(tmp_path), timeout=30, what="nothing left behind")
    proc.signal(signal.SIGTERM)
    total = sum(len(d) for d in expected.values())
    print(f"\ncrash test: {kills} kills, {len(expected)} files, {total} bytes")
