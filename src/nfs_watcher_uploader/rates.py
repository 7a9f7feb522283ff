"""Rates in bytes per second: as users write them (limits and schedules, the way rclone writes
them), and as measured over a window (`RecentRate`).

Rates: `off`, `512K`, `10M`, `1.5G` (binary units, bytes per second; a bare number is bytes
per second). A schedule is `HH:MM,RATE` entries separated by spaces, each in force from its time
of day until the next one's (the last one wraps past midnight), like rclone's
`--bwlimit "08:00,2M 19:00,10M 23:00,off"`.
"""

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_RATE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:i?B|i)?|B)?", re.IGNORECASE)
# Above this a limit limits nothing (and a float would overflow): 'off' says it plainly.
MAX_RATE = 1024**4
_TIME_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_rate(text: str) -> int | None:
    """`off` -> None (no limit); `512K`, `10M`, `1.5G`, `2097152` -> bytes per second. Raises
    ValueError saying what is wrong."""
    value = text.strip()
    if value.lower() == "off":
        return None
    match = _RATE_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{text!r} is not a rate: write 'off' or a number with an optional binary unit "
            "K, M, G or T (bytes per second), e.g. '512K', '10M', '1.5G'"
        )
    # Decimal: exact for any number of digits (a float turns 400 digits into inf).
    rate = int(Decimal(match[1]) * _UNITS[(match[2] or "").upper()])
    if rate > MAX_RATE:
        raise ValueError(f"a limit above {format_rate(MAX_RATE)} limits nothing; write 'off'")
    if rate < 1:
        raise ValueError(f"{text!r} would stop every upload; write 'off' for no limit")
    return rate


def format_rate(rate: int | None) -> str:
    """The way `parse_rate` reads it: None -> 'off', 2097152 -> '2M', 1536 -> '1.5K'."""
    if rate is None:
        return "off"
    for suffix in ("T", "G", "M", "K"):
        unit = _UNITS[suffix]
        if rate >= unit:
            return f"{rate / unit:.4g}{suffix}"
    return str(rate)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a schedule: `rate` from `minute` (of the day) on."""

    minute: int
    rate: int | None

    def __str__(self) -> str:
        return f"{self.minute // 60:02d}:{self.minute % 60:02d},{format_rate(self.rate)}"


@dataclass(frozen=True, slots=True)
class Schedule:
    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        """Raises ValueError naming the entry that is wrong."""
        entries: dict[int, Entry] = {}
        for word in text.split():
            when, sep, rate = word.partition(",")
            time_match = _TIME_RE.fullmatch(when)
            if not sep or time_match is None:
                raise ValueError(
                    f"{word!r} is not a schedule entry: write HH:MM,RATE (e.g. '08:00,2M'), "
                    "entries separated by spaces"
                )
            minute = int(time_match[1]) * 60 + int(time_match[2])
            if minute in entries:
                raise ValueError(f"{when} appears twice in the schedule")
            try:
                entries[minute] = Entry(minute, parse_rate(rate))
            except ValueError as exc:
                raise ValueError(f"entry {word!r}: {exc}") from None
        if not entries:
            raise ValueError("the schedule has no entries")
        return cls(tuple(sorted(entries.values(), key=lambda e: e.minute)))

    def at(self, local: datetime) -> Entry:
        """The entry in force at the local time `local`."""
        minute = local.hour * 60 + local.minute
        in_force = self.entries[-1]  # from the day before, until the first entry of today
        for entry in self.entries:
            if entry.minute > minute:
                break
            in_force = entry
        return in_force

    def __str__(self) -> str:
        return " ".join(map(str, self.entries))


def zone(name: str) -> tzinfo:
    """The time zone APP_TIMEZONE names; raises ValueError for one this system does not know."""
    if name.upper() == "UTC":
        return UTC  # needs no tz database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


class RecentRate:
    """Bytes per second over the last `window` seconds, as measured (bytes committed, bytes
    sent). Written on the event loop, read by whichever thread collects the metrics."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            now = self._clock()
            self._events.append((now, size))
            self._forget_before(now - self.window)

    def per_second(self) -> float:
        with self._lock:
            self._forget_before(self._clock() - self.window)
            return sum(size for _, size in self._events) / self.window

    def _forget_before(self, start: float) -> None:
        while self._events and self._events[0][0] < start:
            self._events.popleft()


class SampledRate:
    """The rate of a growing counter, from samples taken only when someone asks (nothing runs
    between asks): over the last `window` seconds of asks, or since the first sample when the
    asks are further apart. Used on the event loop only."""

    # Samples closer together than this add nothing (a page and a CLI asking at once).
    MIN_GAP_S = 0.25

    def __init__(self, window: float, start: float, value: int = 0) -> None:
        self.window = window
        # Enough room for `window` seconds of samples at MIN_GAP_S.
        self._samples: deque[tuple[float, int]] = deque(
            [(start, value)], maxlen=int(window / self.MIN_GAP_S) + 2
        )

    def rate(self, now: float, value: int) -> float:
        """Per second, from the newest sample at least `window` old (or the oldest) to now."""
        samples = self._samples
        if now - samples[-1][0] >= self.MIN_GAP_S:
            samples.append((now, value))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        elapsed = now - then
        return max(0.0, (value - before) / elapsed) if elapsed > 0 else 0.0
