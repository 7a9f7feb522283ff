"""A file is claimed only once it is completely written; the watcher offers each once, and a
session drains only after a scan made after its stop. A quiet folder (every file too young to
claim, no folder changed) is not listed at every poll, yet nothing new goes unseen for long."""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.intake.watcher import Watcher, stable_files
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.nfs.scan import Known, Scan, ScanMap, Wanted, scan_session
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.sessions.session import Session
from nfs_watcher_uploader.telemetry import Telemetry
from nfs_watcher_uploader.work.pipeline import Pipeline
from tests.support.helpers import (
    Azurite,
    blob_bytes,
    make_settings,
    session_view,
    until,
    wait_for,
    write_file,
)

S = 1_000_000_000  # ns per second


class FakeScan:
    """Returns the scan maps a test sets, like a directory that changes between polls."""

    def __init__(self) -> None:
        self.maps: dict[str, ScanMap] = {}
        self.calls = 0

    def __call__(self, path: Path, wanted: Wanted, known: Known, young_ns: int) -> Scan:
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


@pytest.mark.adversarial
def test_a_file_with_an_mtime_in_the_future_is_reported_and_judged_by_the_time_seen(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """A recorder whose clock is a day ahead (no RTC battery, no NTP yet) writes a.bin. It is
    claimed only once its mtime is APP_MIN_FILE_AGE_S in the past: tomorrow. Meanwhile nothing
    says so: no notice, no last_error, and `files.waiting.max_age` reports 0 s (now minus a
    future mtime, clamped), so NfsWatcherUploaderFilesWaitingTooLong can never fire; after a
    stop the session times out draining with "1 waiting".

    Should: a file that has not changed across scans for APP_MIN_FILE_AGE_S of the service's
    own time is complete, whatever its mtime (or at least it is reported and counted as
    waiting since it was first seen).

    Finding adversary-review-L (second adversarial review, issue 10).
    """
    settings = settings_factory(min_file_age_s=0.5)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "skew"}).json()["date_prefix"]
    path = write_file(settings.nfs_incoming_dir / "skew" / "a.bin", b"from a clock ahead")
    tomorrow = time.time() + 86_400
    os.utime(path, (tomorrow, tomorrow))
    container = azurite.container(settings.azure_container)
    until(
        lambda: (
            blob_bytes(container, f"{date}/skew/a.bin") is not None
            or any("a.bin" in n for n in session_view(running, "skew")["notices"])
        ),
        8,
        lambda: (
            f"a.bin neither uploaded nor reported: {session_view(running, 'skew')['notices']}; "
            f"oldest waiting: {running.service.watcher.oldest_waiting_age()} s"
        ),
    )


def test_a_file_still_being_written_is_not_claimed_early(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory(min_file_age_s=1.0, poll_interval_s=0.1)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "grow"}).json()["date_prefix"]
    path = settings.nfs_incoming_dir / "grow" / "growing.bin"
    chunks = [os.urandom(64 * 1024) for _ in range(8)]
    # A recorder keeps the file open and appends in bursts, 0.4 s apart, for about 3 s.
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(0.4)
            assert running.service.pipeline.stats.uploaded == 0
            assert path.exists(), "claimed while the recorder was still writing"
    container = azurite.container(settings.azure_container)
    data = wait_for(lambda: blob_bytes(container, f"{date}/grow/growing.bin"), timeout=20)
    assert data == b"".join(chunks)
    # Counted once its ledger line is written and it is marked done, a moment after the commit.
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=20)


def test_a_file_seen_once_is_not_ready() -> None:
    assert stable_files({}, {"a": (10, 0)}, now=100.0, min_age=0) == []


def test_a_file_unchanged_and_old_enough_is_ready() -> None:
    scan = {"a": (10, 90 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=5) == ["a"]


def test_a_growing_file_is_not_ready() -> None:
    assert stable_files({"a": (10, 90 * S)}, {"a": (20, 90 * S)}, now=100.0, min_age=0) == []


def test_a_touched_file_is_not_ready() -> None:
    assert stable_files({"a": (10, 90 * S)}, {"a": (10, 91 * S)}, now=100.0, min_age=0) == []


def test_a_file_too_young_is_not_ready() -> None:
    scan = {"a": (10, 98 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=5) == []
    assert stable_files(scan, scan, now=103.0, min_age=5) == ["a"]


def test_a_file_dated_in_the_future_is_not_ready_at_once() -> None:
    scan = {"a": (10, 200 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=0.5) == []


def test_files_in_progress_are_skipped_and_the_oldest_goes_first() -> None:
    scan = {"new": (1, 50 * S), "old": (1, 10 * S), "busy": (1, 5 * S)}
    assert stable_files(scan, scan, now=100.0, min_age=0, skip={"busy"}) == ["old", "new"]


async def test_the_watcher_offers_each_stable_file_once(
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


async def test_the_watcher_stops_offering_when_the_queue_is_full(
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


async def test_a_scan_error_keeps_the_heartbeat_stale(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)

    def broken(path: Path, wanted: Wanted, known: Known, young_ns: int) -> Scan:
        raise OSError(116, "Stale file handle")

    watcher = Watcher(pipeline, Nfs(5), scan=broken)
    before = watcher.heartbeat
    await watcher.scan_once()
    assert watcher.heartbeat == before
    assert watcher.scan_errors == 1


@pytest.mark.adversarial
async def test_a_bug_in_one_sessions_scan_costs_that_scan_never_the_watcher(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    """An error other than an OSError in a scan ended the watcher's task, and the service
    with it; it costs that session's scan, like an NFS error.

    Found attacking issue 21's change.
    """
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)

    def buggy(path: Path, wanted: Wanted, known: Known, young_ns: int) -> Scan:
        raise ValueError("a name no one expected")

    watcher = Watcher(pipeline, Nfs(5), scan=buggy)
    await watcher.scan_once()
    await watcher.scan_once()
    assert watcher.scan_errors == 2


async def test_a_session_is_drained_only_after_a_scan_made_after_its_stop(
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


class CountingScan:
    """The real scan, counted."""

    def __init__(self) -> None:
        self.listings = 0

    def __call__(self, path: Path, wanted: Wanted, known: Known, young_ns: int) -> Scan:
        self.listings += 1
        return scan_session(path, wanted, known, young_ns)


def _quiet_parts(
    parts: tuple[Settings, Sessions, Pipeline], **watcher: Any
) -> tuple[Path, Watcher, CountingScan]:
    _, sessions, pipeline = parts
    sessions.by_name["s"] = Session("s", "20260101", "active", 0.0)
    folder = pipeline.layout.session_folder("s")
    (folder / "cam").mkdir(parents=True)
    for i in range(5):
        write_file(folder / "cam" / f"young{i}.bin", b"young")  # written now: 5 s to go
    counting = CountingScan()
    return folder, Watcher(pipeline, Nfs(5), scan=counting, **watcher), counting


async def test_a_quiet_folder_is_listed_again_when_a_folder_in_it_changes(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    folder, watcher, counting = _quiet_parts(parts)
    await watcher.scan_once()
    await watcher.scan_once()
    await watcher.scan_once()
    assert (counting.listings, watcher.quiet_polls) == (1, 2)  # every file young, nothing new
    with open(folder / "cam" / "young0.bin", "ab") as f:
        f.write(b" and more")  # a write into a young file: it only gets younger
    await watcher.scan_once()
    assert counting.listings == 1
    write_file(folder / "cam" / "new.bin", b"new")  # a new entry in a subfolder
    await watcher.scan_once()
    assert counting.listings == 2
    assert parts[1].by_name["s"].waiting == 6
    (folder / "cam" / "new.bin").rename(folder / "moved.bin")  # renamed out of it
    await watcher.scan_once()
    assert counting.listings == 3


async def test_a_quiet_folder_is_listed_again_once_a_file_comes_of_age(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    now = [0.0]
    _, watcher, counting = _quiet_parts(parts, clock=lambda: now[0])
    now[0] = time.time()  # the files were written just before
    await watcher.scan_once()
    await watcher.scan_once()
    assert counting.listings == 1
    quiet = watcher.quiet_polls
    now[0] += 6  # past APP_MIN_FILE_AGE_S (5 s) for the files written at the start
    await watcher.scan_once()
    assert counting.listings == 2
    queue = parts[2].queue
    assert queue.qsize() == 3  # as many as the queue holds
    while not queue.empty():
        queue.get_nowait()
    await watcher.scan_once()
    assert counting.listings == 3  # looked at every poll now: they could be claimed
    assert watcher.quiet_polls == quiet


async def test_a_quiet_folder_is_listed_again_at_least_every_full_listing_interval(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    """On NFS a folder's attributes may be cached for a long time (acdirmax), hiding a new
    file from the check of the folder's attributes, never from a listing."""
    _, watcher, counting = _quiet_parts(parts, full_list_s=0.3)
    started = time.monotonic()
    await watcher.scan_once()
    while counting.listings < 2:
        assert time.monotonic() - started < 5, "not listed again"
        await watcher.scan_once()
    assert time.monotonic() - started >= 0.3
    assert watcher.quiet_polls >= 1


async def test_a_file_whose_attributes_are_unknown_keeps_its_folder_looked_at_every_poll(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    """A file NFS could not describe this time (a stale handle) may be ready at the next scan:
    its session is never spared a listing, however young its other files are."""
    _, _, counting = _quiet_parts(parts)

    def stale_one(path: Path, wanted: Wanted, known: Known, young_ns: int) -> Scan:
        scan = counting(path, wanted, known, young_ns)
        scan.files["cam/young0.bin"] = None
        return scan

    watcher = Watcher(parts[2], Nfs(5), scan=stale_one)
    for _ in range(3):
        await watcher.scan_once()
    assert (counting.listings, watcher.quiet_polls) == (3, 0)


@pytest.mark.adversarial
async def test_a_file_old_enough_to_claim_is_looked_at_every_poll_in_a_quiet_folder(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    """The stability rule (the same size and mtime across two scans) holds for a file already
    seen whose size changes while its mtime stays old (written by a copy that keeps mtimes),
    among young files that make the rest of the folder quiet."""
    folder, watcher, counting = _quiet_parts(parts)
    old = write_file(folder / "kept-mtime.bin", b"part")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    stamp = os.stat(old).st_mtime_ns
    await watcher.scan_once()
    with open(old, "ab") as f:
        f.write(b" and the rest")
    os.utime(old, ns=(stamp, stamp))
    await watcher.scan_once()
    assert parts[2].queue.qsize() == 0  # changed since the last scan: not ready
    await watcher.scan_once()
    assert parts[2].queue.qsize() == 1
    assert parts[2].queue.get_nowait().seen == (len(b"part and the rest"), stamp)
    assert counting.listings == 3 and watcher.quiet_polls == 0


@pytest.fixture
def tmpfs_root() -> Iterator[Path]:
    """A folder on tmpfs: unlike ext4 (which stops at 2446), it keeps any 64-bit mtime."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm (tmpfs) here: no filesystem that keeps a date past 9999")
    root = Path(tempfile.mkdtemp(prefix="nwu-times-", dir="/dev/shm"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.adversarial
def test_a_file_dated_before_1970_or_after_9999_is_uploaded_with_its_time(
    tmpfs_root: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    """A file dated before 1970 has a negative mtime, which the watcher took for its "unknown"
    marker: it was never claimed, and no line said why. One dated after 9999 made the metadata
    formatter raise: retried for ever as "Unexpected error".

    Issue 21, finding 5.
    """
    settings = make_settings(tmpfs_root, azurite, container_name)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "times"}).json()["date_prefix"]
    dated = {
        "old.bin": (-315_619_200 * S, "1960-01-01T00:00:00.000000Z"),
        "far.bin": (253_402_300_800 * S + 5_000, "+10000-01-01T00:00:00.000005Z"),
    }
    for name, (mtime_ns, _) in dated.items():
        path = write_file(settings.nfs_incoming_dir / "times" / name, name.encode())
        os.utime(path, ns=(mtime_ns, mtime_ns))
        assert path.stat().st_mtime_ns == mtime_ns
    container = azurite.container(container_name)
    until(
        lambda: all(blob_bytes(container, f"{date}/times/{n}") for n in dated),
        20,
        lambda: f"{session_view(running, 'times')}",
    )
    for name, (_, shown) in dated.items():
        props = container.get_blob_client(f"{date}/times/{name}").get_blob_properties()
        assert props.metadata["source_mtime"] == shown


@pytest.mark.adversarial
@pytest.mark.parametrize("replaced_by", ["a link", "a file"])
def test_a_stopped_session_whose_folder_was_replaced_still_ends(
    service_factory: Any, settings_factory: Any, tmp_path: Path, replaced_by: str
) -> None:
    """A stopped session whose incoming folder became a link (or a file) never drained and
    never timed out: `draining` for ever, its name never startable again.

    Issue 21, finding 10.
    """
    settings = settings_factory(drain_timeout_s=1.0)
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "gone"})
    folder = settings.nfs_incoming_dir / "gone"
    folder.rmdir()
    if replaced_by == "a link":
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.write_bytes(b"not a folder")
    running.post("/v1/watch/stop")
    view = wait_for(
        lambda: (v := session_view(running, "gone"))["state"] != "draining" and v,
        timeout=20,
        what="the session to end",
    )
    assert view["state"] == "drain_timed_out"
    assert "not a real folder" in (view["last_error"] or "")
    again = running.post("/v1/watch/start", json={"session_name": "gone"})
    assert "still draining" not in again.text


@pytest.mark.adversarial
def test_a_link_in_place_of_a_sessions_claimed_folder_is_never_followed(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """A draining session's claimed files are looked for in `.processing/<date>/<session>/`
    before it is called drained; that folder replaced by a link to a folder elsewhere: the
    files there were taken for claimed files, uploaded, and deleted by GC.

    Found attacking issue 21's change.
    """
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "lnk"}).json()["date_prefix"]
    secret = write_file(tmp_path / "elsewhere" / "secret.txt", b"not the service's")
    claimed = settings.nfs_processing_root / date / "lnk"
    claimed.rmdir()
    claimed.symlink_to(tmp_path / "elsewhere")
    running.post("/v1/watch/stop")
    wait_for(lambda: session_view(running, "lnk")["drained"], what="drained")
    container = azurite.container(settings.azure_container)
    assert blob_bytes(container, f"{date}/lnk/secret.txt") is None
    assert secret.read_bytes() == b"not the service's"


async def test_a_file_another_replica_should_take_keeps_a_quiet_folder_listed_until_stolen(
    parts: tuple[Settings, Sessions, Pipeline],
) -> None:
    """With other replicas (APP_COORDINATION=azure) a ready file that rendezvous gives to
    another member is offered here once it has looked unchanged for APP_STEAL_AFTER_S (the
    other may be gone). Idle skipping must not hide it: among young files that would make the
    folder quiet, it is listed every poll and its unchanged time goes on counting."""
    now = [time.time()]
    folder, watcher, counting = _quiet_parts(parts, clock=lambda: now[0])
    theirs = write_file(folder / "theirs.bin", b"rendezvous says another member")
    os.utime(theirs, (now[0] - 3600, now[0] - 3600))
    asked: list[float] = []

    def take(session: str, rel: str, stable_s: float) -> bool:
        asked.append(stable_s)
        return rel != "theirs.bin" or stable_s >= 30  # APP_STEAL_AFTER_S

    watcher.take = take
    for _ in range(4):
        await watcher.scan_once()
        now[0] += 1
    assert parts[2].queue.qsize() == 0  # another member's, not yet stale
    assert (counting.listings, watcher.quiet_polls) == (4, 0)
    now[0] += 30
    await watcher.scan_once()
    assert parts[2].queue.get_nowait().rel == "theirs.bin"  # the oldest goes first
    assert asked[-1] >= 30 and counting.listings == 5
