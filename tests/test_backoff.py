"""Trying again: one queue of things due (retried uploads, manifests, webhook events) and one
loop that repeats a step until it succeeds (start-up steps, loading jobs)."""

import asyncio
import logging
import random
import time

import pytest

from nfs_watcher_uploader.backoff import DueQueue, backoff_delay, until_ok


async def test_the_thing_due_first_goes_first_and_those_due_together_in_the_order_they_came() -> (
    None
):
    queue = DueQueue[str, int]((1.0, 1.0))
    start = time.monotonic()
    queue.add("later", 3, delay=0.2)
    queue.add("a", 1)
    queue.add("b", 2)
    got = []
    for _ in range(3):
        key, value = await queue.next()
        queue.done(key)
        got.append((key, value))
    assert got == [("a", 1), ("b", 2), ("later", 3)]
    assert time.monotonic() - start >= 0.2  # not handed out before its time


async def test_a_failing_thing_backs_off_alone_and_holds_up_no_other() -> None:
    queue = DueQueue[str, str]((0.4, 0.4), random.Random(1))
    queue.add("refused", "x")
    key, _ = await queue.next()
    attempt, delay = queue.failed(key)
    assert attempt == 1 and 0.2 <= delay <= 0.4
    queue.add("fresh", "y")  # came after, due now: served while the other backs off
    assert await queue.next() == ("fresh", "y")
    queue.done("fresh")
    assert await queue.next() == ("refused", "x")
    assert queue.failed("refused")[0] == 2


async def test_a_thing_handed_out_stays_counted_and_unique_until_done() -> None:
    queue = DueQueue[str, int]((1.0, 1.0))
    queue.add("job", 1)
    key, _ = await queue.next()
    queue.add("job", 2)  # the same occurrence reported again: ignored
    assert len(queue) == 1 and "job" in queue
    queue.done(key)
    assert len(queue) == 0 and "job" not in queue


async def test_next_waits_for_a_thing_added_later() -> None:
    queue = DueQueue[str, int]((1.0, 1.0))
    waiting = asyncio.create_task(queue.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.add("late", 7)
    assert await asyncio.wait_for(waiting, 5) == ("late", 7)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0), (1000, 30.0)):
        assert full / 2 <= backoff_delay(attempt, 1.0, 30.0, rng) <= full


async def test_until_ok_repeats_a_failing_step_and_says_why_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [OSError("NFS is away"), OSError("still away")]
    waited: list[str] = []

    async def step() -> int:
        if failures:
            raise failures.pop(0)
        return 42

    log = logging.getLogger("test.until_ok")
    with caplog.at_level(logging.WARNING, logger="test.until_ok"):
        got = await until_ok(
            step,
            "load it",
            retry=(0.001, 0.001),
            rng=random.Random(),
            log=log,
            waiting=waited.append,
        )
    assert got == 42 and waited == ["NFS is away", "still away"]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "Could not load it (NFS is away)",
        "Could not load it (still away)",
    ]


async def test_until_ok_waits_for_done_and_lets_other_errors_through() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    log = logging.getLogger("test.until_ok")
    await until_ok(
        step, "x", retry=(0.001, 0.001), rng=random.Random(), log=log, done=lambda: len(calls) == 3
    )
    assert len(calls) == 3

    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await until_ok(broken, "x", retry=(0.001, 0.001), rng=random.Random(), log=log)
