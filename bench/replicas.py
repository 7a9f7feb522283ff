"""`make bench`'s replicas row: the small set uploaded by one replica and by three on one share
(APP_COORDINATION=azure, each its own process with its own staging, all on one Azurite), side
by side run after run: how long each took, and how the work was shared.

`python -m bench.replicas [RUNS]` runs this row alone (on its own Azurite, the small set).

Every replica counts a file once, with its "Uploaded" log line; the time is from the moment the
files appear in incoming (hard links) until the last replica logged its last file, read from
the logs (asking the API would cost the replicas CPU, and its sums of other replicas' counters
are up to a progress period old).
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.helpers import Azurite, ServiceProcess, make_settings

UPLOADED = '"message": "Uploaded '


def _uploaded(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count(UPLOADED)
    except FileNotFoundError:
        return 0


def one_run(work: Path, azurite: Azurite, src: Path, replicas: int, tag: str) -> dict[str, Any]:
    """The set uploaded by `replicas` replicas: seconds, and each replica's files."""
    share = work / f"share-{replicas}{tag}"
    container = f"replicas-{replicas}{tag}"
    procs: list[ServiceProcess] = []
    try:
        for i in range(replicas):
            settings = make_settings(
                share,
                azurite,
                container,
                local_staging_root=work / f"staging-{replicas}{tag}-{i}",
                coordination="azure",
                member_name=f"bench-{i}",
                poll_interval_s=0.1,
                min_file_age_s=0,
                allow_hard_links=True,
            )
            proc = ServiceProcess(settings, work / f"replica-{replicas}{tag}-{i}.log")
            proc.start(wait_ready=False)
            procs.append(proc)
        for proc in procs:
            _until(proc.ready, 90)
        with procs[0].client as c:
            c.post("/v1/watch/start", json={"session_name": "bench"}).raise_for_status()
        for proc in procs:  # each sees the session and every member (rendezvous agrees)
            with proc.client as c:
                _until(lambda c=c: _sees(c.get("/v1/status").json(), replicas), 30)
        incoming = procs[0].settings.nfs_incoming_dir / "bench"
        files = sorted(src.iterdir())
        started = time.perf_counter()
        for path in files:
            os.link(path, incoming / path.name)
        _until(lambda: sum(_uploaded(p.log) for p in procs) >= len(files), 3600, 0.1)
        seconds = time.perf_counter() - started
        shares = [_uploaded(p.log) for p in procs]
    finally:
        for proc in procs:
            if proc.proc is not None:
                proc.proc.terminate()
                proc.proc.wait(60)
                proc.proc = None
    return {"replicas": replicas, "files": len(files), "seconds": seconds, "shares": shares}


def row(work: Path, azurite: Azurite, src: Path, runs: int) -> dict[str, Any]:
    """Medians over `runs`, one and three replicas side by side in each run."""
    one: list[float] = []
    three: list[float] = []
    spread: list[float] = []
    shares: list[list[int]] = []
    for run in range(runs):
        one.append(one_run(work, azurite, src, 1, f"-{run}")["seconds"])
        result = one_run(work, azurite, src, 3, f"-{run}")
        three.append(result["seconds"])
        shares.append(result["shares"])
        fair = result["files"] / 3
        spread.append(max(abs(n - fair) / fair for n in result["shares"]))
    one_s, three_s = statistics.median(one), statistics.median(three)
    return {
        "files": len(list(src.iterdir())),
        "one_replica_seconds": round(one_s, 2),
        "three_replicas_seconds": round(three_s, 2),
        # Throughput of three against one (>= 0.9: three replicas do not collapse).
        "three_over_one": round(one_s / three_s, 3),
        # The largest departure of one replica's share from a third, over the runs.
        "share_spread": round(max(spread), 3),
        "shares": shares,
    }


def _sees(status: dict[str, Any], replicas: int) -> bool:
    live = sum(1 for m in status["members"] if m["live"])
    return status["active_session"] == "bench" and live == replicas


def _until(condition: Any, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # a replica not answering yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("bench replicas: timed out")
        time.sleep(interval)


def main(runs: int = 3) -> dict[str, Any]:
    """The row alone: the small set (1000 files of 64 KiB) on its own Azurite."""
    from bench.run import make_set  # bench.run imports this module

    work = Path(tempfile.mkdtemp(prefix="nwu-bench-replicas-"))
    azurite = Azurite()
    azurite.start()
    try:
        src = work / "src" / "small"
        make_set(src, 1000, 64 * 1024, seed=0)
        result = row(work / "replicas", azurite, src, runs)
    finally:
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
