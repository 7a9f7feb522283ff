"""Control traffic on the wire: requests a minute at rest, counted at a relay, and renews that
never wait behind uploads (the bandwidth cap, 8 MiB blocks, a busy event loop)."""

import asyncio
import json
import os
import time
from collections.abc import Callable

from azure.storage.blob.aio import ContainerClient as AsyncContainerClient

from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.member import Member, latency
from nfs_watcher_uploader.coord.shared_state import SharedState
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import Meter, MeteredTransport, Wire, new_session
from tests.support.helpers import Azurite, wait_for
from tests.support.http_relay import HttpRelay

from .conftest import Control
from .samples import TODAY

BUDGET_PER_MINUTE = 40
CAP = 512 * 1024
BLOCK = 8 * 1024 * 1024


def _listings(relay: HttpRelay) -> list[float]:
    return [r.at for r in list(relay.requests) if r.method == "GET" and "comp=list" in r.path]


def test_control_traffic_at_rest_stays_under_forty_requests_a_minute(
    control: Control, relay: HttpRelay, join: Callable[..., Member]
) -> None:
    assert SharedState(control.client()).import_local(json.dumps(TODAY).encode())
    member = join(client=control.client(relay.url))  # renews every 5 s, in its thread
    coordinator = Coordinator(member, lambda: control.client(relay.url))  # lists every 3 s
    coordinator.start()
    try:
        wait_for(lambda: len(_listings(relay)) >= 9, timeout=60, interval=0.1, what="listings")
    finally:
        coordinator.stop()
    # From the second listing on (the first one is followed by the first read of the state).
    first, last = _listings(relay)[1], _listings(relay)[8]
    window = [r for r in relay.requests if first <= r.at < last]
    per_minute = len(window) / (last - first) * 60
    renews = sum("comp=lease" in r.path for r in window)
    state_reads = sum(r.method == "GET" and "sessions.json" in r.path for r in window)
    print(
        f"control requests at rest: {per_minute:.1f}/min over {last - first:.1f} s "
        f"({len(window)} requests: {renews} renews, 7 listings, {state_reads} state reads)"
    )
    assert per_minute <= BUDGET_PER_MINUTE
    assert state_reads == 0  # the state is read again only when its ETag changes
    assert {r.method for r in window} <= {"GET", "PUT"} and renews >= 3


async def test_a_renew_is_never_queued_behind_capped_uploads_or_a_busy_event_loop(
    azurite: Azurite, join: Callable[..., Member]
) -> None:
    member = join(renew_every_s=0.25, retry_s=0.25)
    # The service's own transport: every request takes its bytes from the capped bucket.
    session = new_session()
    transport = MeteredTransport(Wire(Meter(TokenBucket(CAP)), session, 20, 120))
    bulk = AsyncContainerClient.from_connection_string(
        azurite.connection_string, f"bulk{os.getpid()}x{time.monotonic_ns()}", transport=transport
    )
    async with session, bulk:
        await bulk.create_container()
        blob = bulk.get_blob_client("big.bin")
        block = os.urandom(BLOCK)

        async def stage() -> None:
            await blob.stage_block("YmxvY2stMDAwMA==", block)

        async with asyncio.TaskGroup() as group:
            upload = group.create_task(stage())
            start = len(member.latencies)
            deadline = time.monotonic() + 30
            while len(member.latencies) < start + 12 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # The event loop is blocked (a long scan, say): the renews go on in their thread.
            renews = member.renews
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                pass
            renewed_while_blocked = member.renews - renews
            still_uploading = not upload.done()
            upload.cancel()
    measured = latency(list(member.latencies)[start:])
    assert measured is not None
    print(
        f"renew latency with an 8 MiB block in flight under a {CAP // 1024} KiB/s cap: "
        f"{measured}; {renewed_while_blocked} renews while the event loop was blocked for 1.5 s"
    )
    assert still_uploading, "the block finished: the cap was not loading the link"
    assert measured.count >= 12 and measured.p99 < 1.0
    assert renewed_while_blocked >= 3
