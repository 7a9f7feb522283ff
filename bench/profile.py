"""Where the service's CPU goes: sums py-spy's folded stacks (`BENCH_PROFILE=DIR make bench`)
into a few categories, per file uploaded.

    python -m bench.profile DIR/service-small-key-*.folded --files 1000

Each sample is put in the category of the frame nearest its leaf that matches a rule below (so
aiohttp called by the SDK counts as aiohttp, the SDK's own code as the SDK). Samples of threads
waiting in a queue or a lock (py-spy counts some as active) are left out. At 100 samples a
second, one sample is 10 ms of CPU.
"""

import argparse
from collections import Counter
from pathlib import Path

# (category, a substring of a frame), first match from the leaf up. Order matters only for
# frames that match several.
RULES: list[tuple[str, str]] = [
    ("sign: Shared Key", "blob/_shared/authentication.py"),
    ("sign: lean Shared Key", "nfs_watcher_uploader/blob/signing.py"),
    ("telemetry: spans, metrics", "opentelemetry/"),
    ("telemetry: spans, metrics", "nfs_watcher_uploader/telemetry.py"),
    ("logs: JSON lines", "pythonjsonlogger/"),
    ("logs: JSON lines", "logging/__init__.py"),
    ("api: answering polls", "fastapi/"),
    ("api: answering polls", "starlette/"),
    ("api: answering polls", "uvicorn/protocols"),
    ("api: answering polls", "pydantic"),
    ("aiohttp: request, response", "aiohttp/"),
    ("aiohttp: request, response", "yarl/"),
    ("aiohttp: request, response", "multidict/"),
    ("sdk: pipeline, policies", "azure/core/"),
    ("sdk: pipeline, policies", "core/pipeline/"),
    ("sdk: pipeline, policies", "core/rest/"),
    ("sdk: pipeline, policies", "storage/blob/"),
    ("sdk: pipeline, policies", "blob/_shared/"),
    ("sdk: pipeline, policies", "blob/_serialize"),
    ("sdk: pipeline, policies", "blob/aio/"),
    ("sdk: pipeline, policies", "blob/_generated"),
    ("wire: meter", "nfs_watcher_uploader/uplink/"),
    ("request path (ours)", "nfs_watcher_uploader/blob/"),
    ("nfs: copy (thread)", "nfs_watcher_uploader/nfs/copying.py"),
    ("nfs: claim, complete (thread)", "nfs_watcher_uploader/nfs/moves.py"),
    ("nfs: claim, complete (thread)", "nfs_watcher_uploader/nfs/batch.py"),
    ("nfs: scan (thread)", "nfs_watcher_uploader/nfs/scan.py"),
    ("ledger (thread)", "nfs_watcher_uploader/cloud/ledger.py"),
    ("thread hops", "anyio/"),
    ("thread hops", "concurrent/futures"),
    ("thread hops", "nfs_watcher_uploader/nfs/runner.py"),
    ("thread hops", "threading.py"),
    ("watcher", "nfs_watcher_uploader/intake/"),
    ("pipeline, transfer, sessions", "nfs_watcher_uploader/"),
    ("event loop", "asyncio/"),
    ("event loop", "uvloop"),
]
# Leaves of threads that wait (not CPU).
IDLE = ("Condition.wait", "Queue.get (queue.py", "select (selectors.py", "Event.wait")


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for category, needle in RULES:
            if needle in frame:
                return category
    return "other: " + (stack[-1].split(" (")[0] if stack else "?")


def summarise(paths: list[Path]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    idle = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack_text, _, n = line.rpartition(" ")
            if not stack_text or not n.isdigit():
                continue
            stack = stack_text.split(";")
            if any(needle in stack[-1] for needle in IDLE):
                idle += int(n)
                continue
            counts[categorise(stack[1:])] += int(n)
    return counts, idle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw (folded) files")
    parser.add_argument("--files-uploaded", "--files", type=int, default=0, dest="n")
    parser.add_argument("--rate", type=int, default=100, help="py-spy's samples per second")
    args = parser.parse_args(argv)
    counts, idle = summarise(args.files)
    total = sum(counts.values())
    per = max(args.n, 1) * len(args.files)
    ms = 1000 / args.rate
    unit = "ms/file" if args.n else "ms"
    print(f"{'category':<34} {'samples':>8} {unit:>8} {'share':>6}")
    for category, n in counts.most_common():
        print(f"{category:<34} {n:>8} {n * ms / per:>8.3f} {n / total:>6.1%}")
    print(f"{'total':<34} {total:>8} {total * ms / per:>8.3f}   (idle samples left out: {idle})")


if __name__ == "__main__":
    main()
