"""Each file's bytes are counted where they leave (`Meter.body`): every chunk of a request body
adds to the counter of the upload whose task sends it, tasks the upload starts included (early
blocks), never to another upload's; a request of no file's counts nowhere."""

import asyncio

from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import SENDING, Meter, Sending, already_in_storage

MIB = 1024 * 1024


async def _send(meter: Meter, size: int) -> None:
    async for _ in meter.stream(memoryview(bytes(size)), 0.0):
        await asyncio.sleep(0)  # let the other uploads' chunks interleave


async def test_each_upload_counts_its_own_chunks_in_the_tasks_it_starts() -> None:
    meter = Meter(TokenBucket(rate=512 * MIB))  # capped: small chunks, interleaved

    async def upload(counter: Sending, block: int) -> None:
        SENDING.set(counter)
        async with asyncio.TaskGroup() as tg:  # blocks in tasks of their own, like early blocks
            for _ in range(3):
                tg.create_task(_send(meter, block))
        already_in_storage(1000)  # a block an earlier attempt left

    a, b = Sending(), Sending()
    await asyncio.gather(upload(a, 1 * MIB + 7), upload(b, 2 * MIB + 11))
    assert a.sent == 3 * (1 * MIB + 7) + 1000
    assert b.sent == 3 * (2 * MIB + 11) + 1000
    assert meter.total_sent == a.sent + b.sent - 2000


async def test_a_request_of_no_files_is_counted_nowhere() -> None:
    meter = Meter(TokenBucket())
    await _send(meter, 3 * MIB)
    already_in_storage(10)
    assert SENDING.get() is None and meter.total_sent == 3 * MIB


async def test_every_body_the_lean_request_path_sends_counts_once_for_its_file() -> None:
    """`Meter.payload` (the lean request path's puts, and the SDK transport's): a small body
    uncapped goes out whole without a wait, a large or capped one as a stream of chunks;
    either way the current upload counts each of its bytes once."""
    for bucket in (TokenBucket(), TokenBucket(rate=512 * MIB)):
        meter = Meter(bucket)
        counter = Sending()
        token = SENDING.set(counter)
        try:
            sizes = (0, 10, 64 * 1024, 9 * MIB)
            for size in sizes:
                body = await meter.payload(100, bytes(size), 0.0)
                if not isinstance(body, bytes):
                    async for _ in body:
                        pass
        finally:
            SENDING.reset(token)
        assert counter.sent == sum(sizes), bucket
