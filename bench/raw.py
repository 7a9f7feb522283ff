"""The raw-SDK baseline: upload every file of a folder with the async SDK, no claim, no staging.

Prints {"seconds": ...} measured from the first request to the last commit (imports excluded).
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from azure.storage.blob.aio import BlobServiceClient


async def upload_all(conn: str, container: str, src: Path, concurrency: int) -> float:
    async with BlobServiceClient.from_connection_string(conn) as service:
        client = service.get_container_client(container)
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
    args = parser.parse_args()
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    seconds = asyncio.run(upload_all(conn, args.container, args.src, args.concurrency))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
