"""The bandwidth limit in force follows the override, the schedule and the setting; the bucket
serves the first request first."""

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.rates import Schedule, zone
from nfs_watcher_uploader.uplink.bandwidth import Bandwidth, TokenBucket
from tests.support.helpers import wait_for

MIB = 1024 * 1024


def _at(hour: int, minute: int, second: int = 0) -> float:
    berlin = ZoneInfo("Europe/Berlin")
    return datetime(2026, 11, 30, hour, minute, second, tzinfo=berlin).timestamp()


@pytest.mark.adversarial
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
    (and the liveness probe fails: a restart loop).

    Finding attack2-2 (attack review of issues 12 to 16).
    """
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


async def test_the_schedule_switches_at_its_boundaries(tmp_path: Path) -> None:
    """An injected clock in Berlin time; the bucket follows within a second."""
    now = [_at(7, 59, 59)]
    bandwidth = Bandwidth(
        None,
        Schedule.parse("08:00,2M 19:00,10M 23:00,off"),
        zone("Europe/Berlin"),
        Nfs(5),
        tmp_path,
        clock=lambda: now[0],
    )
    await bandwidth.load()
    # Before the day's first entry, the last one of the day before is in force.
    limit = bandwidth.in_force()
    assert (limit.rate, limit.source, limit.entry) == (None, "schedule", "23:00,off")
    assert bandwidth.bucket.rate is None
    task = asyncio.create_task(bandwidth.run())
    try:
        for when, rate, entry in [
            (_at(8, 0), 2 * MIB, "08:00,2M"),
            (_at(18, 59, 59), 2 * MIB, "08:00,2M"),
            (_at(19, 0), 10 * MIB, "19:00,10M"),
            (_at(23, 0), None, "23:00,off"),
        ]:
            now[0] = when
            moved = time.monotonic()
            while bandwidth.bucket.rate != rate:
                assert time.monotonic() - moved < 1.0, f"{entry} not in force within a second"
                await asyncio.sleep(0.01)
            assert bandwidth.in_force().entry == entry
    finally:
        task.cancel()


async def test_the_bucket_serves_the_first_request_first_at_the_rate() -> None:
    bucket = TokenBucket(1 * MIB)
    done: list[str] = []

    async def request(name: str, priority: float, chunks: int) -> None:
        for _ in range(chunks):
            await bucket.take(64 * 1024, priority)
        done.append(name)

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(request("later", 2.0, 4))
        tg.create_task(request("first", 1.0, 4))
    elapsed = time.monotonic() - started
    assert done == ["first", "later"]  # not in step: the earlier request finishes first
    assert 0.43 <= elapsed < 1.0  # 8 chunks at 1 MiB/s; the first goes at once, into debt
    bucket.set_rate(None)
    await bucket.take(100 * MIB, 3.0)  # no limit: no wait


async def test_a_new_rate_wakes_a_waiting_taker() -> None:
    bucket = TokenBucket(1024)  # 1 KiB/s: a 64 KiB chunk would wait a minute
    await bucket.take(64 * 1024, 1.0)  # into debt
    waiting = asyncio.create_task(bucket.take(1, 2.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    bucket.set_rate(100 * MIB)
    await asyncio.wait_for(waiting, 0.5)


def test_a_damaged_override_file_is_set_aside(service_factory: Any, settings_factory: Any) -> None:
    settings = settings_factory(bandwidth_limit=3 * MIB)
    state = settings.nfs_processing_root / "bandwidth.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"limit": "lots"}')
    running = service_factory(settings)
    assert running.get("/v1/bandwidth").json()["source"] == "setting"
    assert any(p.name.startswith("bandwidth.json.damaged-") for p in state.parent.iterdir())
