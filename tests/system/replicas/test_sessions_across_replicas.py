"""Sessions with N replicas: one shared state, changed by compare-and-swap; any replica answers
start and stop, and shows the whole; a storage outage makes start and stop answer 503."""

import concurrent.futures
import time
from pathlib import Path

import pytest

from tests.support.helpers import Azurite
from tests.support.replicas import cluster, until, write

pytestmark = pytest.mark.slow


def test_twenty_starts_at_once_across_replicas_give_exactly_one_200(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    with cluster(tmp_path, azurite, container_name, fuse=False) as c:
        c.start()

        def start(i: int) -> int:
            replica = c.replicas[i % len(c.replicas)]
            return replica.post("/v1/watch/start", json={"session_name": f"race-{i}"}).status_code

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = sorted(pool.map(start, range(20)))
        assert codes == [200] + [409] * 19
        active = {r.status()["active_session"] for r in c.replicas}
        until(
            lambda: len({r.status()["active_session"] for r in c.replicas}) == 1,
            10,
            "every replica shows the one active session",
        )
        assert None not in active or len(active) >= 1


def test_any_replica_starts_and_stops_and_every_one_shows_the_whole(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """Started on one replica, stopped on another; each replica's /v1/sessions/{name} counts
    every file, whichever replica uploaded it; /v1/status lists the members and the leader."""
    with cluster(tmp_path, azurite, container_name, fuse=False) as c:
        c.start()
        r = c.replicas[0].post("/v1/watch/start", json={"session_name": "whole"})
        assert r.status_code == 200, r.text
        until(lambda: c.replicas[2].status()["active_session"] == "whole", 10, "seen on 2")
        for i in range(30):
            write(c.incoming / "whole" / f"f{i:02d}.bin", b"x" * (1000 + i))
        until(lambda: len(c.blob_names()) >= 30, 60, "every file in storage")
        assert c.replicas[2].post("/v1/watch/stop").json()["state"] == "draining"
        until(
            lambda: all(
                r.get("/v1/sessions/whole").json()["state"] == "drained" for r in c.replicas
            ),
            60,
            "drained everywhere",
        )
        views = [r.get("/v1/sessions/whole").json() for r in c.replicas]
        until(
            lambda: all(r.get("/v1/sessions/whole").json()["uploaded"] == 30 for r in c.replicas),
            30,
            "every replica counting all 30 files",
        )
        by_replica = [n for n in c.uploaded_lines().values()]
        assert sum(by_replica) == 30
        shares = [
            sum(1 for line in r.log.read_text().splitlines() if '"message": "Uploaded ' in line)
            for r in c.replicas
        ]
        assert all(n > 0 for n in shares), shares  # the work was shared
        status = c.replicas[1].status()
        assert status["coordination"] == "azure" and status["control_container"] == c.control
        members = status["members"]
        assert len(members) == 3 and sum(m["leader"] for m in members) == 1
        assert {m["host"] for m in members} == {"replica-0", "replica-1", "replica-2"}
        assert all(v["bytes_uploaded"] >= 0 for v in views)
        # The progress every replica shows counts every member's bytes, as the counters do.
        whole = sum(1000 + i for i in range(30))
        for replica in c.replicas:
            view = replica.get("/v1/sessions/whole").json()
            assert view["bytes_uploaded"] == whole
            assert view["bytes_done"] == whole and view["bytes_remaining"] == 0


def test_a_storage_outage_makes_start_and_stop_answer_503_and_changes_nothing(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    with cluster(tmp_path, azurite, container_name, size=2, fuse=False) as c:
        c.start()
        assert c.replicas[0].post("/v1/watch/start", json={"session_name": "a"}).status_code == 200
        until(lambda: c.replicas[1].status()["active_session"] == "a", 10, "a seen on 1")
        for r in c.replicas:
            r.relay.cut("refuse")
        started = time.monotonic()
        stop = c.replicas[1].post("/v1/watch/stop")
        assert stop.status_code == 503, stop.text
        assert "retry" in stop.json()["detail"]
        assert time.monotonic() - started < 10
        start = c.replicas[1].post("/v1/watch/start", json={"session_name": "b"})
        assert start.status_code == 503
        for r in c.replicas:
            r.relay.cut("pass")
        until(lambda: c.replicas[1].status()["member_valid"], 30, "storage back")
        # Nothing changed: `a` is still the active session, `b` was never started.
        assert c.replicas[1].status()["active_session"] == "a"
        assert c.replicas[1].get("/v1/sessions/b").status_code == 404
        assert c.replicas[1].post("/v1/watch/stop").json()["session_name"] == "a"


def test_a_replica_with_nothing_in_flight_shows_the_rate_and_eta_of_a_file_another_is_sending(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """An operator asks any replica how far a session is: the bytes left, the rate and the
    ETA are the session's over every member (each publishes its files in flight and its
    rate), not those of the replica that happened to answer, which may be sending nothing."""
    size = 4 * 1024 * 1024
    overrides = {"bandwidth_limit": 256 * 1024}  # split over two: about 32 s for the file
    with cluster(tmp_path, azurite, container_name, size=2, fuse=False, overrides=overrides) as c:
        c.start()
        assert c.replicas[0].post("/v1/watch/start", json={"session_name": "s"}).status_code == 200
        until(lambda: c.replicas[1].status()["active_session"] == "s", 10, "seen on 1")
        write(c.incoming / "s" / "big.bin", b"b" * size)

        def sender() -> int | None:
            for r in c.replicas:
                if r.get("/v1/sessions/s").json()["files_in_flight"]:
                    return r.index
            return None

        until(lambda: sender() is not None, 30, "the file in flight somewhere")
        other = c.replicas[1 - (sender() or 0)]
        seen: dict[str, object] = {}

        def whole_shown() -> bool:
            view = other.get("/v1/sessions/s").json()
            seen.update(view)
            return (
                not view["files_in_flight"]
                and view["rate_bytes_per_second"] > 0
                and view["bytes_remaining"] > 0
                and view["eta_seconds"] is not None
                and view["eta_seconds"] > 0
            )

        until(whole_shown, 30, "the other replica's view of the whole")
        assert seen["bytes_remaining"] <= size  # type: ignore[operator]
        assert 0 < seen["rate_bytes_per_second"] <= 2 * 256 * 1024  # type: ignore[operator]
