"""A member whose validity ended commits nothing (APP_COORDINATION=azure): Put Blob and Put Block
List through the lean request path are held back by the meter's gate, before their bytes count
and again after a wait for bandwidth (a commit may wait longer than a lease lasts); blocks are
not held (uncommitted blocks are harmless). Checked on the wire: the relay sees no commit."""

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from azure.storage.blob.aio import BlobServiceClient

from nfs_watcher_uploader.blob.blobinfo import BlobInfo
from nfs_watcher_uploader.blob.block_ids import block_id
from nfs_watcher_uploader.blob.rest import BlobHeaders, Rest
from nfs_watcher_uploader.errors import RetryableError
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import Meter, MeteredTransport, Wire, new_session
from tests.support.helpers import ACCOUNT, KEY, Azurite
from tests.support.relay import Relay

DATA = bytes(range(256)) * 64
MD5 = hashlib.md5(DATA).digest()


@asynccontextmanager
async def rest_through(relay: Relay, container: str, meter: Meter) -> AsyncIterator[Rest]:
    session = new_session()
    wire = Wire(meter, session, 20, 120)
    conn = f"AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={relay.url};"
    transport = MeteredTransport(wire, connection_timeout=20, read_timeout=120)
    client = BlobServiceClient.from_connection_string(conn, transport=transport)
    try:
        yield Rest(client, client.get_container_client(container), wire)
    finally:
        await client.close()
        await session.close()


@pytest.fixture
def recorder(azurite: Azurite) -> Iterator[Relay]:
    relay = Relay(azurite.port, record=True).start()
    yield relay
    relay.stop()


def _made(azurite: Azurite) -> str:
    name = f"gate{uuid.uuid4().hex[:20]}"
    azurite.container(name).create_container()
    return name


async def test_a_closed_gate_holds_back_put_blob_and_put_block_list_but_not_blocks(
    azurite: Azurite, recorder: Relay
) -> None:
    meter = Meter(TokenBucket(), commit_gate=lambda: False)
    blob = BlobHeaders.of(BlobInfo(), MD5, overwrite=False)
    ids = [block_id(bytes(32), 0, MD5)]
    container = _made(azurite)
    async with rest_through(recorder, container, meter) as rest:
        with pytest.raises(RetryableError, match="not a valid member"):
            await rest.put_blob("a.bin", DATA, MD5, blob)
        await rest.put_block("b.bin", ids[0], DATA, MD5)
        with pytest.raises(RetryableError, match="not a valid member"):
            await rest.put_block_list("b.bin", ids, blob)
    sent = recorder.recorded()
    assert [r.target.rpartition("?")[2].partition("&")[0] for r in sent] == ["comp=block"]
    assert meter.commits_held == 2
    assert not azurite.container(container).get_blob_client("b.bin").exists()


async def test_a_commit_whose_validity_ends_while_it_waits_for_bandwidth_is_not_sent(
    azurite: Azurite, recorder: Relay
) -> None:
    asked: list[bool] = []

    def gate() -> bool:  # valid when first asked, not after the wait for bandwidth
        asked.append(True)
        return len(asked) == 1

    # Capped: the head of the request waits for its tokens (the bucket starts empty).
    meter = Meter(TokenBucket(256 * 1024), commit_gate=gate)
    async with rest_through(recorder, _made(azurite), meter) as rest:
        with pytest.raises(RetryableError, match="not a valid member"):
            await rest.put_blob("a.bin", DATA, MD5, BlobHeaders.of(BlobInfo(), MD5, False))
    assert len(asked) == 2 and meter.commits_held == 1
    assert recorder.recorded() == []
