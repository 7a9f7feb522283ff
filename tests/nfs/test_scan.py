"""A scan lists the regular files a session folder holds, down to its depth limit, and reports what
it cannot take (too deep, unreadable)."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfs_watcher_uploader.intake.filters import FileFilter
from nfs_watcher_uploader.nfs.scan import scan_session
from tests.support.helpers import (
    ROOT,
    Azurite,
    blob_bytes,
    free_port,
    make_settings,
    service_env,
    session_view,
    wait_for,
    write_file,
)

NOBODY = 65534


SETPRIV = shutil.which("setpriv")


@pytest.mark.adversarial
@pytest.mark.parametrize("depth", [1, 7])
def test_files_in_subfolders_go_up_with_their_path(
    service_factory: Any, settings_factory: Any, azurite: Azurite, depth: int
) -> None:
    """Finding adversary-11 (first adversarial review, issue 10)."""
    settings = settings_factory(min_file_age_s=1.0)
    running = service_factory(settings)
    date = running.post("/v1/watch/start", json={"session_name": "deep"}).json()["date_prefix"]
    rel = "/".join(f"cam{i}" for i in range(depth)) + "/rec1.bin"
    write_file(settings.nfs_incoming_dir / "deep" / rel, b"in a subfolder")
    running.post("/v1/watch/stop")
    container = azurite.container(settings.azure_container)
    deadline = time.monotonic() + 30
    while not session_view(running, "deep")["drained"]:
        assert time.monotonic() < deadline, "never drained"
        time.sleep(0.05)
    # Drained means the file is in storage.
    assert blob_bytes(container, f"{date}/deep/{rel}") == b"in a subfolder"


@pytest.mark.adversarial
def test_a_folder_too_deep_is_reported_and_blocks_drained(
    service_factory: Any, settings_factory: Any
) -> None:
    """Finding adversary-11 (first adversarial review, issue 10)."""
    settings = settings_factory(drain_timeout_s=1.0)
    running = service_factory(settings)
    running.post("/v1/watch/start", json={"session_name": "deeper"})
    rel = "/".join(f"d{i}" for i in range(8)) + "/too-deep.bin"
    write_file(settings.nfs_incoming_dir / "deeper" / rel, b"nine levels down")
    wait_for(lambda: session_view(running, "deeper")["too_deep"] == 1)
    running.post("/v1/watch/stop")
    wait_for(lambda: session_view(running, "deeper")["state"] == "drain_timed_out", timeout=20)
    assert (settings.nfs_incoming_dir / "deeper" / rel).read_bytes() == b"nine levels down"


@pytest.mark.adversarial
@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_one_unreadable_subfolder_is_reported_and_the_rest_of_the_session_goes_up(
    azurite: Azurite, container_name: str
) -> None:
    """A recorder running as another user with umask 077 makes `cam2/` mode 0700, which the
    service's user cannot read (here: the service runs without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, as a pod with `drop: ALL` does, and cam2/ belongs to someone else).
    `_scan_dir` lets the EACCES from opening it escape, so the whole scan of the session
    fails, every poll: ok.bin, right beside it in the session folder, is never uploaded, and
    the watcher's heartbeat stops, so /healthz turns 503 and Kubernetes restarts the pod,
    again and again.

    Should: cam2/ is reported (notice, last_error; it keeps the session from draining), the
    rest of the session goes up, /healthz stays 200.

    Finding adversary-review-K (second adversarial review, issue 10).
    """
    base = Path(tempfile.mkdtemp(prefix="nwu-attack-", dir="/tmp"))
    proc = None
    try:
        write_file(base / "incoming" / "cams" / "ok.bin", b"readable")
        cam2 = base / "incoming" / "cams" / "cam2"
        write_file(cam2 / "take.bin", b"not readable by us")
        os.chown(cam2, NOBODY, NOBODY)
        os.chmod(cam2, 0o700)
        settings = make_settings(
            base,
            azurite,
            container_name,
            liveness_timeout_s=2.0,
            poll_interval_s=0.1,
            drain_timeout_s=3.0,
        )
        port = free_port()
        env = service_env(settings) | {"APP_HOST": "127.0.0.1", "APP_PORT": str(port)}
        env["PYTHONPATH"] = str(ROOT / "src")
        with open(base / "service.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    str(SETPRIV),
                    "--bounding-set",
                    "-dac_override,-dac_read_search",
                    "--",
                    str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
            )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:

            def ready() -> bool:
                assert proc is not None and proc.poll() is None, (base / "service.log").read_text()
                try:
                    return c.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout=60, what="service ready")
            r = c.post("/v1/watch/start", json={"session_name": "cams"})
            assert r.status_code == 200, r.text
            date = r.json()["date_prefix"]
            container = azurite.container(container_name)
            deadline = time.monotonic() + 8
            health: list[int] = []
            while time.monotonic() < deadline:
                health.append(c.get("/healthz").status_code)
                if blob_bytes(container, f"{date}/cams/ok.bin") == b"readable" and 503 in health:
                    break
                time.sleep(0.2)
            uploaded = blob_bytes(container, f"{date}/cams/ok.bin") == b"readable"
            log_text = (base / "service.log").read_text()
            assert uploaded and 503 not in health, (
                f"ok.bin uploaded: {uploaded}; /healthz answered {sorted(set(health))}; "
                f"scan failures logged: {log_text.count('Scan of')}"
            )
            # cam2/take.bin is still in incoming: the session cannot be drained (complete).
            assert c.post("/v1/watch/stop").status_code == 200
            view = wait_for(
                lambda: (v := c.get("/v1/sessions/cams").json())["state"] != "draining" and v,
                timeout=30,
                what="the drain's end",
            )
            assert view["state"] == "drain_timed_out", view
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def test_a_scan_reports_links_and_lists_only_wanted_files(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"12")
    (tmp_path / "b.txt").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.bin").symlink_to(tmp_path / "a.bin")
    everything = FileFilter(defaults=False)
    scan = scan_session(tmp_path, everything)
    assert set(scan.files) == {"a.bin", "b.txt"}
    assert scan.ignored == {"link.bin": "a symbolic link, not a regular file"}
    bins = FileFilter(extensions=frozenset({".bin"}), defaults=False)
    assert set(scan_session(tmp_path, bins).files) == {"a.bin"}
    assert scan_session(tmp_path / "missing", everything).files == {}


def test_a_scan_skips_the_stat_of_files_too_young_to_claim(tmp_path: Path) -> None:
    (tmp_path / "young").write_bytes(b"1")
    (tmp_path / "old").write_bytes(b"1")
    known = {"young": (99, 2_000), "old": (99, 1_000), "gone": (1, 1)}
    result = scan_session(tmp_path, FileFilter(defaults=False), known, young_ns=1_500).files
    assert result["young"] == (99, 2_000)  # carried, not stat'ed
    assert result["old"] is not None and result["old"][0] == 1  # stat'ed: real size
    assert "gone" not in result  # the listing still says what exists
