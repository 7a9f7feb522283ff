"""Slow copies have their own thread budget: scans, stops and probes keep answering; short
calls of one moment share a thread, each with its own outcome and deadline."""

import asyncio
import contextvars
import errno
import functools
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.constants import MAX_BATCHED_CALLS
from nfs_watcher_uploader.nfs.runner import Nfs, until_spent
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


async def test_short_calls_of_one_turn_share_one_thread_each_with_its_own_outcome() -> None:
    nfs = Nfs(5)
    ran: list[int] = []

    def call(i: int) -> int:
        ran.append(i)
        if i == 3:
            raise OSError(errno.EIO, "this call's own failure")
        return threading.get_ident()

    outcomes = await asyncio.gather(
        *(nfs.call_batched(functools.partial(call, i)) for i in range(6)), return_exceptions=True
    )
    assert ran == list(range(6))  # one after the other, in the order they were made
    assert isinstance(outcomes[3], OSError) and outcomes[3].errno == errno.EIO
    threads = {o for i, o in enumerate(outcomes) if i != 3}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert (nfs.trips, nfs.batched_calls) == (1, 6)


_WHOSE: contextvars.ContextVar[str] = contextvars.ContextVar("whose", default="nobody")


async def test_a_call_runs_with_its_callers_context_variables_in_a_shared_thread() -> None:
    """As `asyncio.to_thread` does: what a thread call starts on the loop (an early block's
    send, started from the copy's thread) works for the caller's file, and its progress is
    counted on it (uplink/wire's SENDING); calls of one batch each see their own caller's."""
    nfs = Nfs(5)

    async def caller(name: str, batched: bool) -> str:
        _WHOSE.set(name)
        fn = _WHOSE.get
        return await (nfs.call_batched(fn) if batched else nfs.call(fn))

    names = [f"file-{i}" for i in range(4)]
    seen = await asyncio.gather(*(caller(n, i % 2 == 0) for i, n in enumerate(names)))
    assert seen == names
    assert _WHOSE.get() == "nobody"  # the callers' settings stayed theirs


async def test_a_batch_holds_at_most_its_share_of_calls() -> None:
    nfs = Nfs(5)
    await asyncio.gather(
        *(nfs.call_batched(lambda: None) for _ in range(2 * MAX_BATCHED_CALLS + 1))
    )
    assert nfs.trips == 3


async def test_a_batched_call_given_up_before_its_turn_never_runs() -> None:
    """Behind a call that hangs (a dead mount), the others of its batch time out on their own
    deadline, are never run once NFS answers again, and only the hung call counts as a thread
    stuck in the kernel."""
    nfs = Nfs(5)
    release = threading.Event()
    ran: list[str] = []

    def hung() -> None:
        release.wait(10)
        ran.append("hung")

    first = asyncio.ensure_future(nfs.call_batched(hung, timeout=0.2))
    second = asyncio.ensure_future(nfs.call_batched(lambda: ran.append("second"), timeout=0.2))
    for task in (first, second):
        with pytest.raises(TimeoutError):
            await task
    assert nfs.abandoned == 1
    release.set()
    await asyncio.sleep(0)
    for _ in range(100):
        if nfs.abandoned == 0:
            break
        await asyncio.sleep(0.01)
    assert nfs.abandoned == 0
    assert ran == ["hung"]
    assert await nfs.call_batched(lambda: "later") == "later"


@pytest.mark.adversarial
async def test_a_batched_call_that_finished_gets_its_own_outcome_though_a_later_one_hangs() -> None:
    """Review of issues 22/23, finding 4: a call that ran and returned before a later call of
    its batch hung (a claim's rename done, then another file's call stuck on the share) gets
    its own outcome, its result or its own error, never a timeout for the other call's hang:
    its caller would take a rename that happened for one that may not have."""
    nfs = Nfs(5)
    release = threading.Event()
    try:
        done = asyncio.ensure_future(nfs.call_batched(lambda: "renamed", timeout=0.3))
        failed = asyncio.ensure_future(nfs.call_batched(_enoent, timeout=0.3))
        hung = asyncio.ensure_future(nfs.call_batched(lambda: release.wait(10), timeout=5))
        assert await done == "renamed"
        with pytest.raises(FileNotFoundError):
            await failed
        assert not hung.done() and nfs.abandoned == 0
    finally:
        release.set()
    assert await hung is True


def _enoent() -> None:
    raise FileNotFoundError(errno.ENOENT, "gone")


async def test_a_call_given_up_at_its_deadline_frees_its_place_and_counts_its_thread() -> None:
    """A hung call (a dead mount) times out, its thread counts as stuck until the call returns,
    and its place in the thread budget goes to the next call at once; past the limit of stuck
    threads, calls fail at once."""
    nfs = Nfs(5, meta_threads=1, max_abandoned=1)
    release = threading.Event()
    with pytest.raises(TimeoutError):
        await nfs.call(lambda: release.wait(10), timeout=0.2)
    assert nfs.abandoned == 1
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still hung"):
        await nfs.call(lambda: "refused")
    assert time.monotonic() - started < 0.1
    release.set()
    for _ in range(100):
        if nfs.abandoned == 0:
            break
        await asyncio.sleep(0.01)
    assert await nfs.call(lambda: "answered", timeout=1) == "answered"


async def test_a_call_waiting_for_its_place_when_given_up_never_runs() -> None:
    nfs = Nfs(5, meta_threads=1)
    release = threading.Event()
    ran: list[str] = []
    first = asyncio.ensure_future(nfs.call(lambda: release.wait(10), timeout=5))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await nfs.call(lambda: ran.append("second"), timeout=0.1)
    release.set()
    assert await first is True
    assert await nfs.call(lambda: "third") == "third"
    assert ran == []


async def test_many_reads_go_in_batches_that_each_end_well_within_the_deadline() -> None:
    """However many small files a listing reads, no single call runs into the NFS deadline: a
    batch stops after a share of it, and the next one goes on."""
    nfs = Nfs(0.4)
    calls: list[int] = []

    def read(keys: Sequence[int], budget: float) -> list[int]:
        calls.append(len(keys))
        return until_spent(keys, budget, lambda k: (time.sleep(0.01), k * 2)[1])

    keys = list(range(200))  # 2 s of reading in all: five times the deadline
    assert await nfs.in_batches(keys, read) == [k * 2 for k in keys]
    assert len(calls) > 4 and nfs.abandoned == 0


async def test_a_failed_batch_raises_its_own_error() -> None:
    """A batch that fails on NFS raises that OSError (the API's 503), not a group of them."""

    def read(keys: Sequence[int], budget: float) -> list[int]:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await Nfs(1).in_batches(list(range(10)), read)
