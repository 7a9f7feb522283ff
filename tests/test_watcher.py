"""The stability rule and the watcher, with an injected clock and scan function."""

from pathlib import Path

import pytest

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.intake.watcher import Watcher, stable_files
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.scan import Scan, ScanMap, Wanted
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.telemetry import Telemetry
from nfs_watcher_uploader.work.pipeline import Pipeline

S = 1_000_000_000  # ns per second


def test_file_seen_once_is_not_ready() -> None:
    assert stable_files({}, {"a": (10, 0)}, now=100.0, min_age=0) == []


def test_unchanged_and_old_enough_is_ready() -> None:
    scan = {"a": (10, 90 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=5) == ["a"]


def test_growing_file_is_not_ready() -> None:
    assert stable_files({"a": (10, 90 * S)}, {"a": (20, 90 * S)}, now=100.0, min_age=0) == []


def test_touched_file_is_not_ready() -> None:
    assert stable_files({"a": (10, 90 * S)}, {"a": (10, 91 * S)}, now=100.0, min_age=0) == []


def test_too_young_is_not_ready() -> None:
    scan = {"a": (10, 98 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=5) == []
    assert stable_files(scan, scan, now=103.0, min_age=5) == ["a"]


def test_mtime_in_the_future_is_not_ready() -> None:
    scan = {"a": (10, 200 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=0.5) == []


def test_skip_and_oldest_first() -> None:
    scan = {"new": (1, 50 * S), "old": (1, 10 * S), "busy": (1, 5 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=0, skip={"busy"}) == ["old", "new"]


class FakeScan:
    """Returns the scan maps a test sets, like a directory that changes between polls."""

    def __init__(self) -> None:
        self.maps: dict[str, ScanMap] = {}
        self.calls = 0

    def __call__(self, path: Path, wanted: Wanted, known: ScanMap, young_ns: int) -> Scan:
        self.calls += 1
        return Scan(dict(self.maps.get(path.name, {})))


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Settings, Sessions, Pipeline]:
    settings = Settings(
        azure_account_url="http://127.0.0.1:1/devstoreaccount1",
        azure_container="c",
        nfs_incoming_dir=tmp_path / "in",
        nfs_processing_root=tmp_path / "proc",
        local_staging_root=tmp_path / "stage",
        min_file_age_s=5,
        max_queue_size=3,
    )
    nfs = Nfs(5)
    sessions = Sessions(settings.nfs_processing_root, nfs)
    pipeline = Pipeline(settings, sessions, Storage(settings), nfs, Telemetry())
    return settings, sessions, pipeline


async def test_watcher_offers_each_stable_file_once(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)
    scan = FakeScan()
    now = [1000.0]
    watcher = Watcher(pipeline, Nfs(5), scan=scan, clock=lambda: now[0])
    scan.maps["s"] = {"a": (1, 900 * S), "young": (1, 999 * S)}
    await watcher.scan_once()
    assert pipeline.queue.qsize() == 0  # seen once only
    await watcher.scan_once()
    assert pipeline.queue.qsize() == 1
    assert pipeline.queue.get_nowait().rel == "a"
    assert sessions.by_name["s"].busy() == {"a"}
    assert sessions.by_name["s"].count("queued") == 1
    await watcher.scan_once()
    assert pipeline.queue.qsize() == 0  # pending: not offered twice
    # The claim failed and the file was released: it is offered again.
    sessions.by_name["s"].pending.clear()
    await watcher.scan_once()
    assert pipeline.queue.qsize() == 1
    assert sessions.by_name["s"].waiting == 1  # "young" waits


async def test_watcher_stops_offering_when_queue_is_full(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)
    scan = FakeScan()
    scan.maps["s"] = {f"f{i}": (1, i * S) for i in range(10)}
    watcher = Watcher(pipeline, Nfs(5), scan=scan, clock=lambda: 1000.0)
    await watcher.scan_once()
    await watcher.scan_once()
    assert pipeline.queue.qsize() == 3
    assert sessions.by_name["s"].busy() == {"f0", "f1", "f2"}  # oldest first


async def test_scan_error_keeps_heartbeat_stale(parts: tuple[Settings, Sessions, Pipeline]) -> None:
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)

    def broken(path: Path, wanted: Wanted, known: ScanMap, young_ns: int) -> Scan:
        raise OSError(116, "Stale file handle")

    watcher = Watcher(pipeline, Nfs(5), scan=broken)
    before = watcher.heartbeat
    await watcher.scan_once()
    assert watcher.heartbeat == before
    assert watcher.scan_errors == 1


async def test_drained_only_after_scan_after_stop(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    _, sessions, pipeline = parts
    session = Session("s", "20260101", "draining", 0.0, stopped_at=500.0)
    session.mark(WorkItem("s", "20260101", "x", claimed=True), "in_flight")
    sessions.by_name["s"] = session
    saved: list[str] = []

    async def finish(s: Session, state: str) -> None:
        saved.append(state)
        s.state = state  # type: ignore[assignment]

    sessions.finish = finish  # type: ignore[method-assign]
    scan = FakeScan()
    now = [400.0]
    watcher = Watcher(pipeline, Nfs(5), scan=scan, clock=lambda: now[0])
    await watcher.scan_once()  # scan started before the stop: proves nothing
    assert saved == []
    now[0] = 600.0
    await watcher.scan_once()  # the file is still in flight
    assert saved == []
    session.pending.clear()
    await watcher.scan_once()
    assert saved == ["drained"]
