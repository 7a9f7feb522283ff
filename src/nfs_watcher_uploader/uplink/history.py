"""The uplink's rate over the last minutes (the status page's sparkline): one point every
UPLINK_HISTORY_STEP_S seconds, the bytes the meter counted in that step, UPLINK_HISTORY_POINTS
of them. One wake-up per step and one subtraction; nothing on the path of a byte."""

import asyncio
import time
from collections import deque
from collections.abc import Callable

from nfs_watcher_uploader.constants import UPLINK_HISTORY_POINTS, UPLINK_HISTORY_STEP_S
from nfs_watcher_uploader.uplink.wire import Meter


class UplinkHistory:
    """Bytes per second sent to storage, step by step (headers included, as the meter counts)."""

    def __init__(
        self,
        meter: Meter,
        step: float = UPLINK_HISTORY_STEP_S,
        points: int = UPLINK_HISTORY_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.step = step
        self._meter = meter
        self._clock = clock
        self._last = meter.total_sent
        # (when the step ended, wall clock; bytes per second over the step)
        self.points: deque[tuple[float, float]] = deque(maxlen=points)

    def __repr__(self) -> str:
        return f"UplinkHistory(points={len(self.points)} step={self.step:g})"

    def sample(self) -> None:
        """End a step: its rate becomes the newest point."""
        total = self._meter.total_sent
        self.points.append((self._clock(), (total - self._last) / self.step))
        self._last = total

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.step)
            self.sample()
