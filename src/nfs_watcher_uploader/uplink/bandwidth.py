"""The upload bandwidth cap: which limit is in force, and the token bucket every byte sent
takes its tokens from (`wire.MeteredTransport` does the taking).

    the limit in force = the override (PUT /v1/bandwidth; kept in <processing>/bandwidth.json
                         until DELETE /v1/bandwidth)
                    else the schedule entry for the time of day (APP_BANDWIDTH_SCHEDULE, read in
                         APP_TIMEZONE)
                    else APP_BANDWIDTH_LIMIT
                    else none

Rates and schedules are read by rates.py.

With other replicas (APP_COORDINATION=azure) the limit is the site's, for all replicas
together: each takes an even share (`share`: the live members), and the override lives in the
shared state (`shared` writes it; every replica takes it from there, `take_override`), not in
bandwidth.json.
"""

import asyncio
import heapq
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nfs_watcher_uploader.constants import (
    BANDWIDTH_BURST_S,
    BANDWIDTH_FILE,
    BANDWIDTH_REFRESH_S,
    BANDWIDTH_TMP_PREFIX,
    BANDWIDTH_WAIT_TICK_S,
    SMALL_FILE_MAX,
)
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.state import StateFile
from nfs_watcher_uploader.rates import Schedule, format_rate, parse_rate, zone

if TYPE_CHECKING:  # config reads its rates with this module's parsers
    from nfs_watcher_uploader.config import Settings

logger = logging.getLogger(__name__)

Source = Literal["override", "schedule", "setting", "none"]
# Keeps the override in the shared state: (rate,) to set one (None inside: 'off'), None to clear.
SharedOverride = Callable[[tuple[int | None] | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit and where it comes from."""

    rate: int | None
    source: Source
    # The schedule entry in force, when the schedule decides.
    entry: str | None = None


@dataclass(order=True)
class _Waiter:
    priority: float
    seq: int
    size: int = field(compare=False)
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class TokenBucket:
    """Bytes per second for everything sent, across all uploads.

    Tokens are bytes, refilled continuously at `rate`; the bucket holds at most BANDWIDTH_BURST_S
    seconds of them (and starts empty), so the rate holds over short windows too. A taker may
    run the bucket into debt by one chunk; the next taker waits until the debt is paid. Takers
    wait in order of `priority` (the time their request began), so the request that started
    first finishes first instead of all of them crawling in step: on a crash, at most about one
    request's bytes were sent for nothing. A new rate wakes the first waiter at once.
    """

    def __init__(self, rate: int | None = None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._rate = rate
        self._tokens = 0.0
        self._stamp = clock()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={format_rate(self._rate)} waiting={len(self._waiters)})"

    @property
    def rate(self) -> int | None:
        return self._rate

    @property
    def unlimited_now(self) -> bool:
        """No limit in force and nobody waiting: `take` would return at once."""
        return self._rate is None and not self._waiters

    def set_rate(self, rate: int | None) -> None:
        if rate == self._rate:
            return
        self._refill()
        if self._rate is None:
            self._tokens = 0.0  # from unlimited: start empty, like at start-up
        self._rate = rate
        self._tokens = min(self._tokens, self._capacity())
        self._wake_first()

    def _capacity(self) -> float:
        return 0.0 if self._rate is None else self._rate * BANDWIDTH_BURST_S

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self._capacity(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _wake_first(self) -> None:
        if self._waiters:
            self._waiters[0].wake.set()

    async def take(
        self, size: int, priority: float, waiting: Callable[[], None] | None = None
    ) -> None:
        """Wait until `size` bytes may be sent; `waiting` is called at least once a second
        meanwhile (waiting for bandwidth is not a stalled upload)."""
        if self._rate is None and not self._waiters:
            return
        me = _Waiter(priority, next(self._seq), size)
        heapq.heappush(self._waiters, me)
        try:
            while True:
                me.wake.clear()
                delay: float | None = None
                if self._waiters[0] is me:
                    self._refill()
                    if self._rate is None or self._tokens >= 0:
                        heapq.heappop(self._waiters)
                        if self._rate is not None:
                            self._tokens -= size
                        self._wake_first()
                        return
                    delay = -self._tokens / self._rate
                if waiting is not None:
                    waiting()
                    delay = (
                        BANDWIDTH_WAIT_TICK_S
                        if delay is None
                        else min(delay, BANDWIDTH_WAIT_TICK_S)
                    )
                try:
                    await asyncio.wait_for(me.wake.wait(), delay)
                except TimeoutError:
                    pass
        except BaseException:
            if me in self._waiters:
                first = self._waiters[0] is me
                self._waiters.remove(me)
                heapq.heapify(self._waiters)
                if first:
                    self._wake_first()
            raise


class Bandwidth:
    """Decides the limit in force and keeps the bucket at it (`run` re-checks the schedule every
    BANDWIDTH_REFRESH_S). The override is written to `state_path` before it takes effect, so
    that a restart keeps it."""

    def __init__(
        self,
        setting: int | None,
        schedule: Schedule | None,
        tz: tzinfo,
        nfs: Nfs,
        processing_root: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.setting, self.schedule, self.tz = setting, schedule, tz
        self.state_path = processing_root / BANDWIDTH_FILE
        self._file = StateFile(self.state_path, nfs, BANDWIDTH_TMP_PREFIX, SMALL_FILE_MAX)
        self._clock = clock
        # None: no override; otherwise the override's rate (None inside: 'off').
        self.override: tuple[int | None] | None = None
        self.bucket = TokenBucket()
        self.loaded = False
        # PUT and DELETE write the state file, then change the override: one at a time.
        self._changing = asyncio.Lock()
        # How many replicas share the limit, and where the override is kept when they do.
        self.share = 1
        self.shared: SharedOverride | None = None

    @classmethod
    def from_settings(
        cls, settings: "Settings", nfs: Nfs, clock: Callable[[], float] = time.time
    ) -> "Bandwidth":
        text = settings.bandwidth_schedule
        return cls(
            settings.bandwidth_limit,
            None if text is None else Schedule.parse(text),
            zone(settings.timezone),
            nfs,
            settings.nfs_processing_root,
            clock,
        )

    def __repr__(self) -> str:
        limit = self.in_force()
        return f"Bandwidth(limit={format_rate(limit.rate)} source={limit.source})"

    def in_force(self) -> Limit:
        if self.override is not None:
            return Limit(self.override[0], "override")
        if self.schedule is not None:
            entry = self.schedule.at(datetime.fromtimestamp(self._clock(), self.tz))
            return Limit(entry.rate, "schedule", str(entry))
        if self.setting is not None:
            return Limit(self.setting, "setting")
        return Limit(None, "none")

    def apply(self) -> Limit:
        """Put the bucket at the limit in force now (this replica's share of it)."""
        limit = self.in_force()
        rate = limit.rate
        if rate is not None and self.share > 1:
            rate = max(1, -(-rate // self.share))
        self.bucket.set_rate(rate)
        return limit

    def set_share(self, replicas: int) -> None:
        """`replicas` share the limit from now on (each takes an even part)."""
        if max(1, replicas) != self.share:
            self.share = max(1, replicas)
            self.apply()

    def take_override(self, override: tuple[int | None] | None) -> None:
        """The override as the shared state has it."""
        if override != self.override:
            self.override = override
            self.apply()

    async def run(self) -> None:
        while True:
            self.apply()
            await asyncio.sleep(BANDWIDTH_REFRESH_S)

    async def load(self) -> None:
        """Read the override a previous run kept. A damaged file is set aside and reported: the
        limit then comes from the settings. Raises OSError when NFS fails (tried again).
        (Shared: the override comes from the shared state instead.)"""
        if self.shared is not None:
            self.loaded = True
            self.apply()
            return
        loaded = await self._file.load(_parse_override)
        if loaded.value is not None:
            self.override = loaded.value
        if loaded.damaged is not None:
            logger.error(
                "Damaged bandwidth override %s (%s); kept as %s, using the settings",
                self.state_path,
                loaded.damaged,
                loaded.aside,
            )
        self.loaded = True
        limit = self.apply()
        logger.info("Bandwidth limit %s (%s)", format_rate(limit.rate), limit.source)

    async def set_override(self, rate: int | None) -> Limit:
        async with self._changing:
            if self.shared is not None:
                await self.shared((rate,))
            else:
                data = json.dumps({"limit": format_rate(rate) if rate is None else rate})
                await self._file.save(data.encode())
            self.override = (rate,)
            limit = self.apply()
        logger.info("Bandwidth override: %s", format_rate(rate))
        return limit

    async def clear_override(self) -> Limit:
        async with self._changing:
            if self.shared is not None:
                await self.shared(None)
            else:
                await self._file.remove()
            self.override = None
            limit = self.apply()
        logger.info("Bandwidth override cleared: %s (%s)", format_rate(limit.rate), limit.source)
        return limit


def _parse_override(raw: bytes) -> tuple[int | None]:
    """The override kept in bandwidth.json: `{"limit": "2M"}` (or "off", or bytes per second)."""
    return (parse_rate(str(json.loads(raw)["limit"])),)
