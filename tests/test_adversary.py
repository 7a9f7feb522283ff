"""The service tried as an attacker or an unlucky operator would (issue "Hold up against an
adversary"): one test per finding, on real files, real renames, a real Azurite, over HTTP."""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.errors import PermanentError
from nfs_watcher_uploader.nfs.copying import Staged, copy_and_hash

from .faultfs import Faults, fuse_available, mounted
from .helpers import (
    ROOT,
    Azurite,
    RunningService,
    ServiceProcess,
    blob_bytes,
    block_permits_free,
    free_port,
    make_settings,
    service_env,
    wait_for,
    write_file,
)

SECRET = b"root:x:0:0:the secret a link points at\n"


def _view(running: RunningService, name: str) -> dict[str, Any]:
    return running.get(f"/v1/sessions/{name}").json()


class HeldCopy:
    """A copy seam that holds the copy of one file until released, so that a test can change
    what waits in the queue behind it (worker_concurrency=1)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, src: Path, dst: Path, *args: Any) -> Staged:
        if src.name == self.name:
            self.started.set()
            self.release.wait(30)
        return copy_and_hash(src, dst, *args)


def _queue_behind_a_held_copy(
    service_factory: Any, settings_factory: Any, session: str
) -> tuple[RunningService, HeldCopy, Path, str]:
    """A running service whose only worker is busy with `hold.bin` while `a.bin` is queued."""
    held = HeldCopy("hold.bin")
    settings = settings_factory(worker_concurrency=1)
    running = service_factory(settings, copy=held)
    date = running.post("/v1/watch/start", json={"session_name": session}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / session
    write_file(incoming / "hold.bin", b"hold")
    assert held.started.wait(20)
    write_file(incoming / "a.bin", b"the recording")
    wait_for(lambda: _view(running, session)["queued"] == 1, what="a.bin queued")
    return running, held, incoming, date


@pytest.mark.parametrize("swap", ["symlink", "fifo"])
def test_1_a_queued_file_swapped_for_a_link_or_fifo_is_left_alone(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path, swap: str
) -> None:
    running, held, incoming, date = _queue_behind_a_held_copy(
        service_factory, settings_factory, "swap"
    )
    secret = write_file(tmp_path / "secret.txt", SECRET)
    (incoming / "a.bin").unlink()
    if swap == "symlink":
        (incoming / "a.bin").symlink_to(secret)
    else:
        os.mkfifo(incoming / "a.bin")
    held.release.set()
    view = wait_for(lambda: (v := _view(running, "swap"))["ignored"] == 1 and v, what="ignored")
    assert any("a.bin" in n and "not a regular file" in n for n in view["notices"])
    container = azurite.container(running.settings.azure_container)
    assert wait_for(lambda: blob_bytes(container, f"{date}/swap/hold.bin")) == b"hold"
    assert blob_bytes(container, f"{date}/swap/a.bin") is None
    assert os.path.lexists(incoming / "a.bin")  # left where it was, not moved, not deleted
    assert (incoming / "a.bin").is_symlink() == (swap == "symlink")
    assert secret.read_bytes() == SECRET
    assert running.get("/v1/files/failed").json()["files"] == []  # not parked
    # The worker is not blocked: the next file goes up.
    write_file(incoming / "next.bin", b"next")
    assert wait_for(lambda: blob_bytes(container, f"{date}/swap/next.bin")) == b"next"


def test_1_a_claimed_file_swapped_for_a_link_is_never_read(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    """The swap after the claim, in .processing: the copy opens with O_NOFOLLOW."""
    from nfs_watcher_uploader.nfs import moves

    secret = write_file(tmp_path / "secret.txt", SECRET)

    def claim_then_swap(folder: Path, rel: str, dst: Path, *args: Any) -> moves.Moved:
        moved = moves.claim(folder, rel, dst, *args)
        if rel == "a.bin" and moved is moves.Moved.DONE:
            dst.unlink()
            dst.symlink_to(secret)
        return moved

    settings = settings_factory()
    running = service_factory(settings, claim=claim_then_swap)
    date = running.post("/v1/watch/start", json={"session_name": "late"}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / "late" / "a.bin", b"real")
    wait_for(lambda: _view(running, "late")["ignored"] == 1, what="ignored")
    container = azurite.container(settings.azure_container)
    assert blob_bytes(container, f"{date}/late/a.bin") is None
    back = settings.nfs_incoming_dir / "late" / "a.bin"
    assert back.is_symlink() and secret.read_bytes() == SECRET  # put back, never deleted
    assert running.get("/v1/files/failed").json()["files"] == []


def test_2_a_symlinked_session_folder_is_never_followed(
    service_factory: Any, settings_factory: Any, azurite: Azurite, tmp_path: Path
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    elsewhere = tmp_path / "elsewhere"
    write_file(elsewhere / "precious.bin", b"not for upload")
    settings.nfs_incoming_dir.mkdir(parents=True, exist_ok=True)
    (settings.nfs_incoming_dir / "evil").symlink_to(elsewhere)
    r = running.post("/v1/watch/start", json={"session_name": "evil"})
    assert r.status_code == 409, r.text
    assert "not a real folder" in r.json()["detail"]
    assert running.get("/v1/status").json()["active_session"] is None
    # A folder swapped for a link after the start is not followed either.
    date = running.post("/v1/watch/start", json={"session_name": "later"}).json()["date_prefix"]
    later = settings.nfs_incoming_dir / "later"
    later.rmdir()
    later.symlink_to(elsewhere)
    wait_for(lambda: any("not a real folder" in n for n in _view(running, "later")["notices"]))
    scans = running.service.watcher.last_scan_ok or 0
    wait_for(lambda: (running.service.watcher.last_scan_ok or 0) > scans + 0.3, what="scans")
    assert (elsewhere / "precious.bin").read_bytes() == b"not for upload"
    container = azurite.container(settings.azure_container)
    assert blob_bytes(container, f"{date}/later/precious.bin") is None
    assert not list((settings.nfs_processing_root / date / "later").iterdir())


def test_3_concurrent_starts_make_exactly_one_active_session(
    service_factory: Any, settings_factory: Any
) -> None:
    settings = settings_factory()
    running = service_factory(settings)

    def start(i: int) -> int:
        with httpx.Client(base_url=running.base_url, timeout=30) as c:
            return c.post("/v1/watch/start", json={"session_name": f"s{i}"}).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(start, range(50)))
    assert sorted(codes) == [200] + [409] * 49, codes
    winner = running.get("/v1/status").json()["active_session"]
    running.stop()
    again = service_factory(settings)
    status = again.get("/v1/status").json()
    assert status["active_session"] == winner and status["state_error"] is None


def test_4_block_permits_come_back_after_failing_uploads(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    """The container deleted under multi-block uploads, then recreated: every block permit is
    returned, and later multi-block files still go up."""
    settings = settings_factory(
        azure_max_block_size=64 * 1024, azure_max_single_put_size=64 * 1024, retry_max_s=0.5
    )
    running = service_factory(settings)
    storage = running.service.storage
    full = block_permits_free(storage)
    date = running.post("/v1/watch/start", json={"session_name": "blocks"}).json()["date_prefix"]
    container = azurite.container(settings.azure_container)
    incoming = settings.nfs_incoming_dir / "blocks"
    first = {f"f{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(4)}
    for name, data in first.items():
        write_file(incoming / name, data)
    wait_for(lambda: running.get("/v1/status").json()["in_flight"] > 0, what="uploads running")
    container.delete_container()
    wait_for(lambda: running.get("/v1/status").json()["retrying"] > 0, what="failing uploads")
    wait_for(lambda: _create(container), timeout=60, what="container recreated")
    later = {f"g{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(3)}
    for name, data in later.items():
        write_file(incoming / name, data)
    expected = first | later
    wait_for(
        lambda: all(blob_bytes(container, f"{date}/blocks/{n}") == d for n, d in expected.items()),
        timeout=90,
    )
    wait_for(lambda: running.get("/v1/status").json()["in_flight"] == 0)
    assert block_permits_free(storage) == full


def _create(container: Any) -> bool:
    try:
        container.create_container()
    except Exception:  # still being deleted (409), or already there
        return container.exists()
    return True


def test_5_a_name_that_is_not_utf8_never_answers_500(
    service_factory: Any, settings_factory: Any
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "bytes"})
    folder = os.fsencode(settings.nfs_incoming_dir / "bytes")
    with open(os.path.join(folder, b"bad\xff\n.bin"), "wb") as f:
        f.write(b"x")
    wait_for(lambda: _parked(running), what="the file parked")
    for path in ("/v1/status", "/v1/sessions", "/v1/sessions/bytes", "/v1/files/failed"):
        r = running.get(path)
        assert r.status_code == 200, (path, r.text)
    (parked,) = _parked(running)
    assert parked["filename"] == "bad\\xff\\n.bin"
    assert "not valid UTF-8" in parked["reason"]
    assert "bad\\xff" in running.get("/v1/status").json()["last_error"]
    running.stop()
    again = service_factory(settings)
    r = again.get("/v1/files/failed")
    assert r.status_code == 200 and r.json()["files"][0]["filename"] == "bad\\xff\\n.bin"


def _parked(running: RunningService) -> list[dict[str, Any]]:
    r = running.get("/v1/files/failed")
    assert r.status_code == 200, r.text
    return r.json()["files"]


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    server = Azurite(port=free_port(), location=tmp_path / "azurite")
    server.start()
    yield server
    server.stop()


def test_6_a_claim_never_renames_over_a_file_still_retrying(
    service_factory: Any, tmp_path: Path, own_azurite: Azurite
) -> None:
    settings = make_settings(
        tmp_path, own_azurite, "retrying", drain_timeout_s=0.5, retry_max_s=0.5
    )
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "rec"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "rec"
    own_azurite.stop()
    write_file(incoming / "a.bin", b"first take")
    wait_for(lambda: _view(running, "rec")["retrying"] == 1, what="a.bin retrying")
    running.post("/v1/watch/stop")
    wait_for(lambda: _view(running, "rec")["state"] == "drain_timed_out", what="timed out")
    assert running.post("/v1/watch/start", json={"session_name": "rec"}).status_code == 200
    write_file(incoming / "a.bin", b"second take")
    wait_for(lambda: _view(running, "rec")["held"] == 1, what="the new a.bin held back")
    claimed = settings.nfs_processing_root / date / "rec" / "a.bin"
    assert claimed.read_bytes() == b"first take"
    own_azurite.start()
    container = own_azurite.container("retrying")
    assert wait_for(lambda: blob_bytes(container, f"{date}/rec/a.bin"), 60) == b"first take"
    assert wait_for(lambda: blob_bytes(container, f"{date}/rec/a~2.bin"), 60) == b"second take"


def test_7_a_second_park_of_the_same_name_keeps_the_first(
    service_factory: Any, settings_factory: Any
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "park"}).json()["date_prefix"]
    incoming = settings.nfs_incoming_dir / "park"
    write_file(incoming / "bad.", b"first")
    wait_for(lambda: len(_parked(running)) == 1)
    write_file(incoming / "bad.", b"second")
    wait_for(lambda: len(_parked(running)) == 2)
    parked = sorted(_parked(running), key=lambda f: f["parked_as"])
    assert [p["filename"] for p in parked] == ["bad.", "bad."]
    folder = settings.nfs_processing_root / "_failed" / date / "park"
    kept = {(folder / p["parked_as"]).read_bytes() for p in parked}
    assert kept == {b"first", b"second"}
    assert all(p["reason"].startswith("blob names must not end") for p in parked)


def test_8_concurrent_retries_upload_and_count_a_file_once(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    names = {f"x{i}.bin" for i in range(10)}
    refuse = set(names)

    def refuse_once(staged: Path, copied: Staged) -> None:
        if staged.name in refuse:
            refuse.discard(staged.name)
            raise PermanentError("injected: refused once")

    settings = settings_factory()
    running = service_factory(settings, on_staged=refuse_once)
    date = running.post("/v1/watch/start", json={"session_name": "twice"}).json()["date_prefix"]
    data = {name: os.urandom(5000) for name in names}
    for name in names:
        write_file(settings.nfs_incoming_dir / "twice" / name, data[name])
    wait_for(lambda: len(_parked(running)) == len(names))
    together = threading.Barrier(8)

    def retry(_: int) -> int:
        with httpx.Client(base_url=running.base_url, timeout=30) as c:
            together.wait()
            return c.post("/v1/files/retry").json()["requeued"]

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(retry, range(8))) == len(names)
    container = azurite.container(settings.azure_container)
    wait_for(lambda: all(blob_bytes(container, f"{date}/twice/{n}") == d for n, d in data.items()))
    wait_for(lambda: _idle(running), what="nothing queued, in flight or retrying")
    view = _view(running, "twice")
    assert view["uploaded"] == len(names)
    assert view["bytes_uploaded"] == sum(map(len, data.values()))
    assert running.service.pipeline.stats.uploaded == len(names)


def _idle(running: RunningService) -> bool:
    status = running.get("/v1/status").json()
    return status["queue_depth"] == status["in_flight"] == status["retrying"] == 0


def test_9_a_reused_name_keeps_both_versions(
    service_factory: Any, settings_factory: Any, azurite: Azurite
) -> None:
    settings = settings_factory()
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "reuse"}).json()["date_prefix"]
    path = settings.nfs_incoming_dir / "reuse" / "chunk_0001.bin"
    container = azurite.container(settings.azure_container)
    blob = f"{date}/reuse/chunk_0001"
    write_file(path, b"version one")
    assert wait_for(lambda: blob_bytes(container, f"{blob}.bin")) == b"version one"
    wait_for(lambda: not path.exists())
    write_file(path, b"version two")
    assert wait_for(lambda: blob_bytes(container, f"{blob}~2.bin")) == b"version two"
    assert blob_bytes(container, f"{blob}.bin") == b"version one"
    view = wait_for(lambda: (v := _view(running, "reuse"))["renamed"] == 1 and v)
    assert any("chunk_0001~2.bin" in n for n in view["notices"])
    # The same bytes again are already up: counted, nothing new is created.
    wait_for(lambda: not path.exists())
    write_file(path, b"version one")
    wait_for(lambda: _view(running, "reuse")["uploaded"] == 3)
    names = sorted(b.name for b in container.list_blobs())
    assert names == [f"{blob}.bin", f"{blob}~2.bin"]


@pytest.mark.slow
@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_10_slow_copies_never_starve_scans_stops_or_probes(
    tmp_path: Path, azurite: Azurite, container_name: str, service_factory: Any
) -> None:
    faults = Faults(3)
    with mounted(tmp_path / "server", tmp_path / "nfs", faults) as mount:
        settings = make_settings(
            tmp_path,
            azurite,
            container_name,
            nfs_incoming_dir=mount / "incoming",
            nfs_processing_root=mount / ".processing",
            nfs_timeout_s=5.0,
            liveness_timeout_s=5.0,
        )
        running = service_factory(settings)
        running.post("/v1/watch/start", json={"session_name": "slow"})
        folder = tmp_path / "server" / "incoming" / "slow"
        faults.read_latency = 0.5  # each read of a copy takes half a second
        for i in range(20):
            write_file(folder / f"f{i:02d}.bin", os.urandom(2 * 1024 * 1024))
        wait_for(lambda: running.service.pipeline.in_flight == 16, timeout=30, what="16 copies")
        scans = running.service.watcher.last_scan_ok or 0
        started = time.monotonic()
        r = running.post("/v1/watch/stop")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 2.0
        wait_for(lambda: (running.service.watcher.last_scan_ok or 0) > scans + 1, what="scans")
        assert running.service.pipeline.in_flight == 16  # the copies are still going
        for _ in range(10):
            assert running.get("/healthz").status_code == 200
            time.sleep(0.3)
        faults.read_latency = 0.0


@pytest.mark.parametrize("depth", [1, 7])
def test_11_files_in_subfolders_go_up_with_their_path(
    service_factory: Any, settings_factory: Any, azurite: Azurite, depth: int
) -> None:
    settings = settings_factory(min_file_age_s=1.0)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "deep"}).json()["date_prefix"]
    rel = "/".join(f"cam{i}" for i in range(depth)) + "/rec1.bin"
    write_file(settings.nfs_incoming_dir / "deep" / rel, b"in a subfolder")
    running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)
    deadline = time.monotonic() + 30
    while not _view(running, "deep")["drained"]:
        assert time.monotonic() < deadline, "never drained"
        time.sleep(0.05)
    # Drained means the file is in storage.
    assert blob_bytes(container, f"{date}/deep/{rel}") == b"in a subfolder"


def test_11_a_folder_too_deep_is_reported_and_blocks_drained(
    service_factory: Any, settings_factory: Any
) -> None:
    settings = settings_factory(drain_timeout_s=1.0)
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "deeper"})
    rel = "/".join(f"d{i}" for i in range(8)) + "/too-deep.bin"
    write_file(settings.nfs_incoming_dir / "deeper" / rel, b"nine levels down")
    wait_for(lambda: _view(running, "deeper")["too_deep"] == 1)
    running.post("/v1/watch/stop")
    wait_for(lambda: _view(running, "deeper")["state"] == "drain_timed_out", timeout=20)
    assert (settings.nfs_incoming_dir / "deeper" / rel).read_bytes() == b"nine levels down"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"local_staging_root": ".processing"}, "are the same folder"),
        ({"nfs_processing_root": "incoming/.processing"}, "is inside APP_NFS_INCOMING_DIR"),
        ({"local_staging_root": "incoming/staging"}, "is inside APP_NFS_INCOMING_DIR"),
        ({"nfs_processing_root": "/dev/shm/nwu-processing"}, "another filesystem"),
    ],
)
def test_12_unsafe_roots_are_refused_at_start_touching_nothing(
    tmp_path: Path, azurite: Azurite, overrides: dict[str, str], message: str
) -> None:
    values = {k: v if v.startswith("/") else str(tmp_path / v) for k, v in overrides.items()}
    if "another" in message and os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test folder here")
    settings = make_settings(tmp_path, azurite, "unsafe", **values)
    claimed = write_file(tmp_path / ".processing" / "20260101" / "s" / "claimed.bin", b"keep")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    env = service_env(settings) | {"APP_PORT": str(free_port()), "APP_HOST": "127.0.0.1"}
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unsafe settings" in result.stderr and message in result.stderr, result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing created or removed
    assert claimed.read_bytes() == b"keep"
    assert not Path("/dev/shm/nwu-processing").exists()


def test_13_a_write_after_the_claim_is_uploaded_too(
    service_factory: Any,
    settings_factory: Any,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer that pauses longer than APP_MIN_FILE_AGE_S, its file still open: the first
    part goes up; the later writes are found before GC deletes the file, and the whole file
    goes up again over the same blob."""
    settings = settings_factory(min_file_age_s=0.3, gc_interval_s=1.5)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "pause"}).json()["date_prefix"]
    container = azurite.container(settings.azure_container)
    blob = f"{date}/pause/rec.bin"
    first, second = os.urandom(100_000), os.urandom(50_000)
    with open(settings.nfs_incoming_dir / "pause" / "rec.bin", "wb") as f:
        f.write(first)
        f.flush()
        assert wait_for(lambda: blob_bytes(container, blob)) == first  # the pause
        f.write(second)
    assert wait_for(lambda: blob_bytes(container, blob) == first + second, timeout=20)
    view = _view(running, "pause")
    assert view["late_writes"] == 1
    assert any("LATE WRITE" in r.getMessage() for r in caplog.records)
    metrics = running.get("/metrics").text.splitlines()
    assert any(m.startswith("files_late_writes_total") and m.endswith(" 1.0") for m in metrics)


@pytest.mark.slow
@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_exit_on_stall_ends_a_hung_process(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """For Docker/compose, which never restart an unhealthy container: APP_EXIT_ON_STALL_S."""
    faults = Faults(5)
    with mounted(tmp_path / "server", tmp_path / "nfs", faults) as mount:
        settings = make_settings(
            tmp_path,
            azurite,
            container_name,
            nfs_incoming_dir=mount / "incoming",
            nfs_processing_root=mount / ".processing",
            nfs_timeout_s=0.5,
            liveness_timeout_s=1.0,
            exit_on_stall_s=2.0,
        )
        proc = ServiceProcess(settings, tmp_path / "service.log")
        proc.start()
        with proc.client as c:
            assert c.post("/v1/watch/start", json={"session_name": "hang"}).status_code == 200
        faults.stall()
        try:
            wait_for(lambda: "APP_EXIT_ON_STALL_S" in proc.log.read_text(), timeout=30)
            # Threads blocked in a FUSE request cannot die until it is answered (a hard NFS
            # mount's can: NFS waits are killable), so the exit completes once FUSE answers.
            faults.release()
            assert proc.proc is not None
            code = proc.proc.wait(30)
        finally:
            faults.release()
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGKILL)
        assert code == 70, proc.log.read_text()[-2000:]


def test_state_file_with_two_active_sessions_keeps_both(
    service_factory: Any, settings_factory: Any
) -> None:
    """What finding 3 left on disk: rather than forget every session, the newest stays active
    and the other drains."""
    settings = settings_factory()
    state = settings.nfs_processing_root / "sessions.json"
    write_file(
        state,
        b'{"version": 1, "sessions": ['
        b'{"name": "old", "date_prefix": "20260101", "state": "active", "started_at": 1,'
        b' "stopped_at": null},'
        b'{"name": "new", "date_prefix": "20260101", "state": "active", "started_at": 2,'
        b' "stopped_at": null}]}',
    )
    running = service_factory(settings)
    assert running.get("/v1/status").json()["active_session"] == "new"
    assert _view(running, "old")["state"] in ("draining", "drained")
