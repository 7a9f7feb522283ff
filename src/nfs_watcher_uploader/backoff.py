"""Trying again: the backoff between attempts, the queue of things due for their next attempt
(`DueQueue`: retried uploads, manifests, webhook events) and the loop that repeats a step until
it succeeds (`until_ok`: start-up steps, loading durable jobs).

Every wait is capped exponential backoff with jitter: base * 2**(attempt-1), at most `cap`,
times 0.5-1.0, so that many retries never fall in step.
"""

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from nfs_watcher_uploader.redaction import redact


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, times 0.5-1.0."""
    raw = min(cap, base * 2 ** min(attempt - 1, 30))
    return raw * (0.5 + rng.random() / 2)


async def until_ok[T](
    step: Callable[[], Awaitable[T]],
    what: str,
    *,
    retry: tuple[float, float],
    rng: random.Random,
    log: logging.Logger,
    retryable: tuple[type[BaseException], ...] = (OSError,),
    done: Callable[[], bool] = lambda: True,
    waiting: Callable[[str], None] = lambda error: None,
) -> T:
    """Run `step` until it returns without a `retryable` error and `done()` holds; return what
    it returned. Between attempts: `waiting(error)`, a warning on `log` naming `what`, and a
    backoff of `retry` (base, cap). Anything else raised ends it."""
    attempt = 0
    while True:
        try:
            result = await step()
            if done():
                return result
            error = "not done"
        except retryable as exc:
            error = redact(str(exc))  # it becomes /readyz's phase: no credential in it
        attempt += 1
        delay = backoff_delay(attempt, *retry, rng)
        waiting(error)
        log.warning("Could not %s (%s); trying again in %.1f s", what, error, delay)
        await asyncio.sleep(delay)


@dataclass
class _Due[T]:
    value: T
    attempt: int = 0
    # Of its entry in the heap: an older entry of the same key is stale.
    seq: int = 0


class DueQueue[K: Hashable, T]:
    """Things by key, each due at its own time; `next` hands out the one due first (those due
    at the same time in the order they were scheduled), waiting until one is. One that fails
    backs off on its own (`failed`), so it never holds up the others. A thing handed out stays
    in the queue (counted, and `add` ignores its key) until `done` or `failed`."""

    def __init__(self, retry: tuple[float, float], rng: random.Random | None = None) -> None:
        self._retry = retry  # (base, cap) of `failed`'s backoff
        self._rng = rng or random.Random()
        self._items: dict[K, _Due[T]] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return f"DueQueue(items={len(self._items)})"

    def values(self) -> list[T]:
        """Every value in the queue, due or not (handed out too, until `done`)."""
        return [due.value for due in self._items.values()]

    def add(self, key: K, value: T, delay: float = 0.0) -> None:
        """Due `delay` seconds from now; a key already in the queue is left as it is."""
        if key not in self._items:
            due = _Due(value)
            self._items[key] = due
            self._schedule(key, due, delay)

    def done(self, key: K) -> None:
        self._items.pop(key, None)

    def failed(self, key: K) -> tuple[int, float]:
        """Back `key` off; returns its attempt count and the delay to its next attempt."""
        due = self._items[key]
        due.attempt += 1
        delay = backoff_delay(due.attempt, *self._retry, self._rng)
        self._schedule(key, due, delay)
        return due.attempt, delay

    def _schedule(self, key: K, due: _Due[T], delay: float) -> None:
        due.seq = next(self._seq)
        heapq.heappush(self._heap, (time.monotonic() + delay, due.seq, key))
        self._wake.set()

    async def next(self) -> tuple[K, T]:
        """The key and value due first, once its time has come."""
        while True:
            now = time.monotonic()
            while self._heap:
                at, seq, key = self._heap[0]
                due = self._items.get(key)
                if due is None or due.seq != seq:  # done, or scheduled again since
                    heapq.heappop(self._heap)
                elif at <= now:
                    heapq.heappop(self._heap)
                    return key, due.value
                else:
                    break
            timeout = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
