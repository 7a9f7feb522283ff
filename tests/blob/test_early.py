"""Blocks of a large file go out while it is read, and a read error sends no block twice."""

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfs_watcher_uploader.blob.blocks import BLOCK_BUDGET_BYTES
from nfs_watcher_uploader.nfs.copying import BlockSink, Staged, copy_and_hash
from tests.support.helpers import Azurite, blob_bytes, block_permits_free, wait_for, write_file
from tests.support.relay import Relay, through

MIB = 1024 * 1024


BLOCK = 4 * MIB


class SlowNfs:
    """A copy whose reads take `pause` per block (a slow NFS server), that records when each
    copy ended, and can fail once after `fail_after` blocks (an EIO mid-file)."""

    def __init__(self, pause: float, fail_after: int | None = None) -> None:
        self.pause, self.fail_after = pause, fail_after
        self.ended: list[float] = []
        self.offered = 0

    def __call__(
        self,
        src: Path,
        dst: Path,
        progress: Callable[[], None],
        block_size: int,
        single_put_size: int,
        in_memory_max: int,
        sink: BlockSink | None = None,
    ) -> Staged:
        def slowly(index: int, data: bytes, md5: bytes) -> None:
            time.sleep(self.pause)
            if self.fail_after is not None and index == self.fail_after:
                self.fail_after = None
                raise OSError(errno.EIO, "Input/output error", str(src))
            self.offered += 1
            if sink is not None:
                sink(index, data, md5)

        try:
            return copy_and_hash(
                src,
                dst,
                progress,
                block_size,
                single_put_size,
                in_memory_max,
                slowly if sink is not None else None,
            )
        finally:
            self.ended.append(time.monotonic())


def _run(
    tmp_path: Path,
    azurite: Azurite,
    container: str,
    relay: Relay,
    service_factory: Callable[..., Any],
    copy: SlowNfs,
    size: int,
) -> tuple[bytes, bytes | None, Any]:
    settings = through(
        relay,
        azurite,
        tmp_path,
        container,
        azure_max_block_size=BLOCK,
        azure_max_single_put_size=BLOCK,
        retry_base_s=0.1,
    )
    running = service_factory(settings, copy=copy)
    date = running.post("/v1/watch/start", json={"session_name": "early"}).json()["date_prefix"]
    data = os.urandom(size)
    write_file(settings.nfs_incoming_dir / "early" / "large.bin", data)
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=60)
    got = blob_bytes(azurite.container(container), f"{date}/early/large.bin")
    return data, got, running


def test_blocks_go_out_while_the_file_is_read(
    tmp_path: Path, azurite: Azurite, container_name: str, relay: Relay, service_factory: Any
) -> None:
    size = 10 * BLOCK + 12345
    copy = SlowNfs(pause=0.3)
    data, got, running = _run(tmp_path, azurite, container_name, relay, service_factory, copy, size)
    assert got == data
    (ended,) = copy.ended
    before_end = relay.sent_until(ended)
    print(f"\nsent before the copy ended: {before_end / size:.2f} of the file")
    assert before_end >= 0.8 * size  # the blocks went out while the rest was read
    assert relay.total <= 1.02 * size  # and none of them twice
    assert (
        block_permits_free(running.service.storage) == BLOCK_BUDGET_BYTES // BLOCK
    )  # all returned


def test_a_read_error_mid_file_sends_no_block_twice(
    tmp_path: Path, azurite: Azurite, container_name: str, relay: Relay, service_factory: Any
) -> None:
    """EIO after 6 blocks: the copy is retried, the 6 blocks already in storage stay there,
    and the blob is committed once, whole, byte-exact."""
    size = 10 * BLOCK
    copy = SlowNfs(pause=0.05, fail_after=6)
    data, got, running = _run(tmp_path, azurite, container_name, relay, service_factory, copy, size)
    assert got == data
    assert len(copy.ended) == 2 and running.service.pipeline.stats.retries == 1
    print(f"\nsent in all: {relay.total / size:.3f} x the file")
    assert relay.total <= 1.02 * size
