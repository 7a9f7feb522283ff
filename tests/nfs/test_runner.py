"""Slow copies have their own thread budget: scans, stops and probes keep answering."""

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.nfs.runner import Nfs, until_spent
from tests.support.faultfs import Faults, fuse_available, mounted
from tests.support.helpers import (
    Azurite,
    make_settings,
    wait_for,
    write_file,
)


@pytest.mark.adversarial
@pytest.mark.slow
@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_slow_copies_never_starve_scans_stops_or_probes(
    tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """Finding adversary-10 (first adversarial review, issue 10)."""
    faults = Faults(3)
    with mounted(tmp_path / "server", tmp_path / "nfs", faults) as mount:
        settings = make_settings(
            tmp_path,
            azurite,
            container_name,
            nfs_incoming_dir=mount / "incoming",
            nfs_processing_root=mount / ".processing",
            nfs_timeout_s=5.0,
            liveness_timeout_s=5.0,
        )
        running = service_factory(settings)
        running.post("/v1/watch/start", json={"session_name": "slow"})
        folder = tmp_path / "server" / "incoming" / "slow"
        faults.read_latency = 0.5  # each read of a copy takes half a second
        for i in range(20):
            write_file(folder / f"f{i:02d}.bin", os.urandom(2 * 1024 * 1024))
        wait_for(lambda: running.service.pipeline.in_flight == 16, timeout=30, what="16 copies")
        scans = running.service.watcher.last_scan_ok or 0
        started = time.monotonic()
        r = running.post("/v1/watch/stop")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 2.0
        wait_for(lambda: (running.service.watcher.last_scan_ok or 0) > scans + 1, what="scans")
        assert running.service.pipeline.in_flight == 16  # the copies are still going
        for _ in range(10):
            assert running.get("/healthz").status_code == 200
            time.sleep(0.3)
        faults.read_latency = 0.0


async def test_many_reads_go_in_batches_that_each_end_well_within_the_deadline() -> None:
    """However many small files a listing reads, no single call runs into the NFS deadline: a
    batch stops after a share of it, and the next one goes on."""
    nfs = Nfs(0.4)
    calls: list[int] = []

    def read(keys: Sequence[int], budget: float) -> list[int]:
        calls.append(len(keys))
        return until_spent(keys, budget, lambda k: (time.sleep(0.01), k * 2)[1])

    keys = list(range(200))  # 2 s of reading in all: five times the deadline
    assert await nfs.in_batches(keys, read) == [k * 2 for k in keys]
    assert len(calls) > 4 and nfs.abandoned == 0


async def test_a_failed_batch_raises_its_own_error() -> None:
    """A batch that fails on NFS raises that OSError (the API's 503), not a group of them."""

    def read(keys: Sequence[int], budget: float) -> list[int]:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await Nfs(1).in_batches(list(range(10)), read)
