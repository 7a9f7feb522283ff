"""Slow copies have their own thread budget: scans, stops and probes keep answering."""

import os
import time
from pathlib import Path
from typing import Any

import pytest

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
