"""The raw-SDK baseline: upload every file of a folder with the async SDK, no claim, no staging.

Prints {"seconds": ...} measured from the first request to the last commit (imports excluded).
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from azure.storage.blob.aio import ContainerClient


async def upload_all(
    conn: str, container: str, src: Path, concurrency: int, container_url: str | None
) -> float:
    if container_url:  # a SAS: the container exists
        client = ContainerClient.from_container_url(container_url)
    else:
        client = ContainerClient.from_connection_string(conn, container)
    async with client:
        if not container_url:
            await client.create_container()
        files = sorted(src.iterdir())
        slots = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> None:
            async with slots:
                with open(path, "rb") as f:
                    await client.upload_blob(
                        path.name, f, overwrite=True, length=os.fstat(f.fileno()).st_size
                    )

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for path in files:
                tg.create_task(one(path))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--container", required=True)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--container-url", help="the container's URL with a SAS")
    args = parser.parse_args()
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    seconds = asyncio.run(
        upload_all(conn, args.container, args.src, args.concurrency, args.container_url)
    )
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
