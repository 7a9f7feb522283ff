"""Rates and schedules as written, the schedule with an injected clock, the bucket, bad
settings and bad requests. (The cap on the wire: test_uplink.py.)"""

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nfs_watcher_uploader.config import load_settings
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.rates import Schedule, format_rate, parse_rate, zone
from nfs_watcher_uploader.uplink.bandwidth import Bandwidth, TokenBucket

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("off", None),
        ("OFF", None),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("10M", 10 * MIB),
        ("10Mi", 10 * MIB),
        ("10MiB", 10 * MIB),
        ("1.5G", 1536 * MIB),
        ("2097152", 2 * MIB),
        (" 3M ", 3 * MIB),
    ],
)
def test_rates_as_rclone_writes_them(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12Q", "'12Q' is not a rate"),
        ("", "is not a rate"),
        ("-1M", "is not a rate"),
        ("0", "would stop every upload; write 'off'"),
        ("0.0000001K", "would stop every upload"),
        ("M", "is not a rate"),
    ],
)
def test_bad_rates_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


def test_rates_print_as_they_are_read() -> None:
    for rate in (None, 1, 1536, 2 * MIB, 1536 * MIB, 20 * MIB):
        assert parse_rate(format_rate(rate)) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("08:00", "not a schedule entry"),
        ("8h,2M", "not a schedule entry"),
        ("25:00,1M", "not a schedule entry"),
        ("08:00,2M 08:00,3M", "08:00 appears twice"),
        ("08:00,fast", "entry '08:00,fast': 'fast' is not a rate"),
        ("   ", "no entries"),
    ],
)
def test_bad_schedules_say_which_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


def _at(hour: int, minute: int, second: int = 0) -> float:
    berlin = ZoneInfo("Europe/Berlin")
    return datetime(2026, 11, 30, hour, minute, second, tzinfo=berlin).timestamp()


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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_BANDWIDTH_LIMIT": "12Q"}, "APP_BANDWIDTH_LIMIT: Value error, '12Q' is not a rate"),
        ({"APP_BANDWIDTH_SCHEDULE": "08:00,2M 9am,1M"}, "APP_BANDWIDTH_SCHEDULE: Value error"),
        ({"APP_TIMEZONE": "Mars/Olympus"}, "APP_TIMEZONE: Value error, unknown time zone"),
        ({"APP_UPLOAD_ORDER": "random"}, "APP_UPLOAD_ORDER"),
        (
            {"APP_BANDWIDTH_LIMIT": "1M", "APP_BANDWIDTH_SCHEDULE": "08:00,2M"},
            "set APP_BANDWIDTH_LIMIT or APP_BANDWIDTH_SCHEDULE, not both",
        ),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("APP_AZURE_ACCOUNT_URL", "http://127.0.0.1:1/devstoreaccount1")
    monkeypatch.setenv("APP_AZURE_CONTAINER", "c")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert message in str(info.value)


def test_bad_bandwidth_requests_answer_422_and_change_nothing(
    service_factory: Any, settings_factory: Any
) -> None:
    running = service_factory(settings_factory(bandwidth_limit=3 * MIB))
    before = running.get("/v1/bandwidth").json()
    for body, message in [
        ({"limit": "12Q"}, "limit: '12Q' is not a rate"),
        ({"limit": "0"}, "would stop every upload"),
        ({"limit": None}, "limit"),
        ({"rate": "1M"}, "limit"),
        ({"limit": "1M", "extra": 1}, "extra"),
    ]:
        r = running.client.put("/v1/bandwidth", json=body)
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"], r.text
    assert running.get("/v1/bandwidth").json() == before
    assert before["limit"] == "3M" and before["source"] == "setting"
    assert not (running.settings.nfs_processing_root / "bandwidth.json").exists()
    r = running.client.put("/v1/bandwidth", json={"limit": 1048576})
    assert r.status_code == 200 and r.json()["limit"] == "1M"
    metrics = running.get("/metrics").text.splitlines()
    (line,) = [m for m in metrics if m.startswith("upload_bandwidth_limit_bytes_per_second")]
    assert float(line.split()[-1]) == 1048576


def test_a_damaged_override_file_is_set_aside(service_factory: Any, settings_factory: Any) -> None:
    settings = settings_factory(bandwidth_limit=3 * MIB)
    state = settings.nfs_processing_root / "bandwidth.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"limit": "lots"}')
    running = service_factory(settings)
    assert running.get("/v1/bandwidth").json()["source"] == "setting"
    assert any(p.name.startswith("bandwidth.json.damaged-") for p in state.parent.iterdir())
