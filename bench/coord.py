"""`python -m bench.coord`: what coordination (APP_COORDINATION=azure) costs on the wire, and
how long a lease renew takes while uploads fill a capped link. One Azurite, started here.

  traffic   one member renewing (every 5 s) and its roster loop (a listing every 3 s), through
            a relay that counts the HTTP requests on the wire, for --seconds: at rest, then
            busy (its progress counters change every second, so they are written as often as
            the member allows)
  latency   renews every 0.5 s while two 8 MiB blocks are in flight under a 512 KiB/s cap:
            through the control client (its own session and thread), and through the
            service's metered transport (where a renew waits behind the blocks)

Prints the figures; no assertions (tests/coord assert the targets).
"""

import argparse
import asyncio
import os
import threading
import time
import uuid

from azure.storage.blob.aio import BlobLeaseClient as AsyncLease
from azure.storage.blob.aio import ContainerClient as AsyncContainer
from tests.support.helpers import ACCOUNT, KEY, Azurite
from tests.support.http_relay import HttpRelay

from nfs_watcher_uploader.coord.client import control_client, ensure_container
from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.member import Member, latency
from nfs_watcher_uploader.coord.names import member_blob
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import Meter, MeteredTransport, Wire, new_session

CAP = 512 * 1024
BLOCK = 8 * 1024 * 1024


def _connection_string(url: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url};"
    )


def traffic(azurite: Azurite, seconds: float, busy: bool) -> str:
    relay = HttpRelay(azurite.port).start()
    name = f"bench{uuid.uuid4().hex[:12]}-ctl"
    make = lambda: control_client(name, connection_string=_connection_string(relay.url))  # noqa: E731
    ensure_container(make())
    member = Member(make())
    member.join()
    member.start()
    coordinator = Coordinator(member, make)
    coordinator.start()
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.wait(1.0):
            n += 1
            member.set_progress({"bench": {"uploaded": n}})

    churner = threading.Thread(target=churn, daemon=True)
    if busy:
        churner.start()
    time.sleep(3.5)  # past the first listing and the first read of the state
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    stop.set()
    coordinator.stop()
    member.leave(delete=True)
    relay.stop()
    window = [r for r in relay.requests if start <= r.at < end]
    kinds = {
        "renews": sum("comp=lease" in r.path for r in window),
        "listings": sum("comp=list" in r.path for r in window),
        "progress writes": sum("comp=metadata" in r.path for r in window),
    }
    other = len(window) - sum(kinds.values())
    detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
    rate = len(window) / (end - start) * 60
    return (
        f"{'busy' if busy else 'at rest'}: {rate:.1f} control requests/min "
        f"({len(window)} in {end - start:.0f} s: {detail}, {other} other)"
    )


async def renew_latency(azurite: Azurite, seconds: float) -> list[str]:
    name = f"bench{uuid.uuid4().hex[:12]}-ctl"
    ensure_container(control_client(name, connection_string=azurite.connection_string))
    member = Member(control_client(name, connection_string=azurite.connection_string))
    member.join()
    session = new_session()
    metered = MeteredTransport(Wire(Meter(TokenBucket(CAP)), session, 20, 120))
    bulk = AsyncContainer.from_connection_string(
        azurite.connection_string, f"bulk{uuid.uuid4().hex[:12]}", transport=metered
    )
    control = AsyncContainer.from_connection_string(
        azurite.connection_string, name, transport=metered
    )
    via_meter: list[float] = []
    async with session, bulk, control:
        await bulk.create_container()
        blob = bulk.get_blob_client("big.bin")
        blocks = [os.urandom(BLOCK) for _ in range(2)]

        async def stage(i: int) -> None:
            await blob.stage_block(f"YmxvY2stMDAw{i}A==", blocks[i])

        async def renew_via_meter() -> None:
            blob = control.get_blob_client(member_blob(member.incarnation))
            lease = AsyncLease(blob, lease_id=member.incarnation)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.monotonic()
                await lease.renew()
                via_meter.append(time.monotonic() - started)
                await asyncio.sleep(0.5)

        member.renew_every_s = 0.5
        first = len(member.latencies)
        member.start()
        async with asyncio.TaskGroup() as group:
            uploads = [group.create_task(stage(i)) for i in range(2)]
            await asyncio.sleep(0.2)  # the blocks ask for the link first
            await renew_via_meter()
            for upload in uploads:
                upload.cancel()
        member.leave(delete=True)
    own = list(member.latencies)[first:]
    return [
        _figures("control client (own session, own thread)", own),
        _figures("metered transport", via_meter),
    ]


def _figures(what: str, values: list[float]) -> str:
    return f"renew latency via {what}: {latency(values) or 'no renew completed'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    azurite = Azurite()
    azurite.start()
    try:
        print(traffic(azurite, args.seconds, busy=False))
        print(traffic(azurite, args.seconds, busy=True))
        for line in asyncio.run(renew_latency(azurite, min(args.seconds, 30.0))):
            print(line)
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
