"""Rates and schedules are read the way rclone writes them, printed the way they are read, and
measured over a window."""

import pytest

from nfs_watcher_uploader.rates import RecentRate, Schedule, format_rate, parse_rate

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
def test_rates_are_read_as_rclone_writes_them(text: str, rate: int | None) -> None:
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
def test_bad_schedules_say_which_entry_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


def test_a_recent_rate_forgets_what_left_the_window() -> None:
    now = [100.0]
    rate = RecentRate(window=10, clock=lambda: now[0])
    rate.add(500)
    now[0] += 5
    rate.add(1500)
    assert rate.per_second() == 200
    now[0] += 6  # the first upload is out of the window
    assert rate.per_second() == 150
    now[0] += 10
    assert rate.per_second() == 0
