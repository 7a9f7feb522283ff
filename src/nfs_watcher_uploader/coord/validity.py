"""A member's own validity: whether it may claim, and whether it may adopt.

Azure starts a renewed lease's period when the renew arrives, which is after it was sent. So
counting LEASE_S from the *send* time of the last renew that went through ends this member's
validity no later than its lease ends in storage: once peers may see it dead, it has already
stopped claiming. The clock is CLOCK_BOOTTIME: monotonic, and unlike CLOCK_MONOTONIC it goes on
while the system is suspended (a board put to sleep mid-lease wakes up invalid, not believing
it still holds a lease that ran out while it slept); a paused process (SIGSTOP) is covered by
either.

A member is *steady* once it has been valid without a gap for a whole lease period. Only a
steady member adopts: after an outage of the uplink that every replica shares, each one must
first renew its own lease for a full period, by which time every other live member has done
the same, so no one adopts a member that is only as cut off as it was.
"""

import threading
import time
from collections.abc import Callable


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (Linux), or the monotonic clock where there is none."""
    return time.clock_gettime(_BOOTTIME)


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class Validity:
    """Written by the renewing thread, read by any other."""

    def __init__(self, lease_s: float, clock: Callable[[], float] = boottime) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._until: float | None = None
        self._since: float | None = None
        self._ended = False

    def __repr__(self) -> str:
        return f"Validity(remaining={self.remaining():.1f}s steady={self.steady()})"

    def renewed(self, sent_at: float) -> None:
        """A lease operation sent at `sent_at` (this clock) went through."""
        with self._lock:
            if self._ended:
                raise RuntimeError("validity ended for good: a lost lease is never taken again")
            if self._until is None or sent_at >= self._until:  # after a gap: not steady
                self._since = sent_at
            self._until = max(self._until or sent_at, sent_at + self.lease_s)

    def end(self) -> None:
        """The lease is lost: never valid again through this object."""
        with self._lock:
            self._until = self._since = None
            self._ended = True

    def valid(self) -> bool:
        with self._lock:
            return self._until is not None and self._clock() < self._until

    def remaining(self) -> float:
        """Seconds of validity left (0 when none)."""
        with self._lock:
            return 0.0 if self._until is None else max(0.0, self._until - self._clock())

    def steady(self) -> bool:
        """Valid, without a gap, for at least a whole lease period."""
        with self._lock:
            if self._until is None or self._since is None:
                return False
            now = self._clock()
            return now < self._until and now - self._since >= self.lease_s
