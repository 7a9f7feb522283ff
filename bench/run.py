"""`make bench`: the service against rclone and the raw async SDK, on one Azurite, in one run.

Per file set (small: 1,000 x 64 KiB; large: 4 x 128 MiB; `--scale` multiplies the counts) and
per credential (`--auth`: the account key, which signs every request, and a container SAS, which
signs none: what production uses; all three ways use the same one):
  service  end to end, from the moment the files appear in incoming/<session>/ (hard links,
           made after the clock starts) until the service has committed the last blob (read
           from its log, which costs it nothing: asking its API would); configured as it runs
           by default, the OpenTelemetry SDK on for /metrics, no exporter;
  rclone   `rclone copy` with its defaults;
  raw      the async SDK uploading straight from the files (the limit of machine and Azurite).
The small set is also sent with the status page's poller asking the API once a second (way
`service+page`, side by side with `service` in each run), and the CPU of one poll round is
measured on its own (rounds back to back against the idle service, less its idle CPU).
Then the cost of watching 10,000 waiting files at a 1 s poll (CPU and RSS over time), the
small set uploaded by one replica and by three on one share (bench/replicas), and the uplink
figures, counted on the wire by a relay between the service and Azurite: throughput
under a 20 MiB/s cap (how close to the cap), and the resume figure (a 256 MiB file under a
32 MiB/s cap, SIGKILLed at 60 %, restarted: all bytes sent / file size).
Prints a table and writes the same figures as JSON. No assertions: the figures are the output.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.helpers import (  # noqa: E402
    Azurite,
    ServiceProcess,
    free_port,
    make_settings,
    service_env,
)
from tests.support.relay import Relay  # noqa: E402

from bench import replicas  # noqa: E402

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


# A container SAS for the bench: what rclone needs for `copy` with its defaults (it lists the
# destination and reads each blob back), so the three ways use the same one. (The service also
# runs with `cw` alone, production's least privilege; rclone cannot.)
SAS_PERMISSION = "rcwl"
WAYS = ("service", "rclone", "raw")


@dataclass
class Result:
    set: str
    way: str
    files: int
    bytes: int
    seconds: float
    cpu_seconds: float
    auth: str = "key"

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.seconds

    @property
    def files_s(self) -> float:
        return self.files / self.seconds

    @property
    def cpu_s_per_gib(self) -> float:
        return self.cpu_seconds / (self.bytes / 1024**3)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_mem(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def container_sas(azurite: Azurite, container: str, permission: str = SAS_PERMISSION) -> str:
    """Create `container` (a SAS cannot) and return a SAS for it."""
    azurite.container(container).create_container()
    return azurite.container_sas(container, permission)


def make_set(folder: Path, count: int, size: int, seed: int) -> int:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(count):
        (folder / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
    return count * size


class Service:
    """The service as its own process, configured for the benchmark."""

    def __init__(
        self,
        root: Path,
        azurite: Azurite,
        container: str,
        extra_env: dict[str, str] | None = None,
        auth: str = "key",
        **overrides: Any,
    ):
        self.auth = auth
        if auth == "sas":
            overrides.update(
                azure_auth="sas",
                azure_sas_token=container_sas(azurite, container),
                azure_connection_string=None,
                azure_create_container=False,
            )
        self.settings = make_settings(root, azurite, container, **overrides)
        self.port = free_port()
        env = service_env(self.settings)
        # As it runs by default: the SDK on (for /metrics), no OTLP endpoint.
        env["OTEL_SDK_DISABLED"] = "false"
        env.update(APP_HOST="127.0.0.1", APP_PORT=str(self.port), **(extra_env or {}))
        root.mkdir(parents=True, exist_ok=True)
        self.log = open(root / "service.log", "wb")
        self._log_read = open(root / "service.log", "rb")
        self.proc = subprocess.Popen(
            [str(BIN / "nfs-watcher-uploader")], env=env, stdout=self.log, stderr=self.log
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self._wait(lambda: self.http.get("/readyz").status_code == 200, 60)

    def _wait(self, condition: Any, timeout: float, interval: float = 0.01) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(interval)
        raise RuntimeError(f"benchmark service: timed out; see {self.log.name}")

    def uploaded(self, session: str) -> int:
        """Files of `session` logged as uploaded since the last call (the log is read on from
        where the last call stopped)."""
        needle = f'"session_name": "{session}"'.encode()
        lines = self._log_read.read().splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):  # half written: read it again next time
            self._log_read.seek(-len(lines.pop()), os.SEEK_CUR)
        return sum(1 for line in lines if b'"message": "Uploaded ' in line and needle in line)

    def upload(
        self, set_name: str, src: Path, total: int, tag: str = "", page: bool = False
    ) -> Result:
        """The set, from the moment it appears to its last commit; with `page`, while a poller
        asks the API what the status page asks, once a second."""
        session = f"bench-{set_name}-{self.auth}{tag}{'-page' if page else ''}"
        self._settle()
        self.http.post("/v1/watch/start", json={"session_name": session}).raise_for_status()
        incoming = self.settings.nfs_incoming_dir / session
        files = sorted(src.iterdir())
        self.uploaded(session)  # skip what was logged before
        cpu0 = proc_cpu(self.proc.pid)
        profiler = self._profile(set_name)
        poller = PagePoller(self.http.base_url) if page else None
        started = time.perf_counter()
        if poller is not None:
            poller.start()
        for path in files:
            os.link(path, incoming / path.name)
        # Read from the log: asking the API would cost the service CPU that rclone is not
        # charged (at 10 answers a second, 0.1-0.2 ms per small file in the profile).
        done = [0]

        def all_up() -> bool:
            done[0] += self.uploaded(session)
            return done[0] >= len(files)

        self._wait(all_up, 3600, 0.01)
        seconds = time.perf_counter() - started
        cpu = proc_cpu(self.proc.pid) - cpu0
        if poller is not None:
            poller.stop()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        self.http.post("/v1/watch/stop").raise_for_status()
        way = "service+page" if page else "service"
        return Result(set_name, way, len(files), total, seconds, cpu, self.auth)

    def _settle(self, quiet: float = 0.03, timeout: float = 60) -> None:
        """Wait until the previous sessions have drained and the service is quiet (less than
        `quiet` of a core over half a second): a run must not pay for the last one's manifest
        and clean-up (the page run comes right after the plain one)."""

        def drained() -> bool:
            sessions = self.http.get("/v1/sessions").json()["sessions"]
            return all(s["state"] != "draining" for s in sessions)

        self._wait(drained, timeout, 0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cpu0 = proc_cpu(self.proc.pid)
            time.sleep(0.5)
            if proc_cpu(self.proc.pid) - cpu0 < quiet * 0.5:
                return

    def poll_round_cpu(self, src: Path, rounds: int) -> dict[str, Any]:
        """CPU of the service per poll round (the page's requests, back to back) while the
        files of `src` upload: a 64 KiB/s override keeps every worker busy with a file in
        flight and the rest waiting (what a round reads), at little CPU of its own, which is
        measured as long again without the rounds and taken off. Then the files go up at full
        speed and the session is stopped."""
        http = self.http
        session = "bench-page-state"
        http.post("/v1/watch/start", json={"session_name": session}).raise_for_status()
        http.put("/v1/bandwidth", json={"limit": "64K"}).raise_for_status()
        files = sorted(src.iterdir())
        incoming = self.settings.nfs_incoming_dir / session
        for path in files:
            os.link(path, incoming / path.name)
        workers = self.settings.worker_concurrency
        self._wait(lambda: http.get("/v1/status").json()["in_flight"] >= workers, 120)
        client = httpx.Client(base_url=http.base_url, timeout=30)
        status = client.get("/v1/status").json()
        cpu0, started = proc_cpu(self.proc.pid), time.perf_counter()
        for _ in range(rounds):
            for path in PagePoller.PATHS:
                client.get(path).raise_for_status()
        busy_s = time.perf_counter() - started
        busy_cpu = proc_cpu(self.proc.pid) - cpu0
        cpu0 = proc_cpu(self.proc.pid)
        time.sleep(busy_s)
        quiet_cpu = proc_cpu(self.proc.pid) - cpu0
        client.close()
        http.delete("/v1/bandwidth").raise_for_status()
        view = f"/v1/sessions/{session}"
        self._wait(lambda: http.get(view).json()["uploaded"] >= len(files), 600)
        http.post("/v1/watch/stop").raise_for_status()
        per_round = max(0.0, busy_cpu - quiet_cpu) / rounds
        return {
            "rounds": rounds,
            "files_in_flight": status["files_in_flight_total"],
            "files_waiting": len(files) - status["files_in_flight_total"],
            "cpu_ms_per_round": round(per_round * 1000, 3),
            "core_percent_at_1_hz": round(per_round * 100, 3),
        }

    def _profile(self, set_name: str) -> subprocess.Popen[bytes] | None:
        """With BENCH_PROFILE=DIR, py-spy samples the service during the upload (its CPU
        figures then include the sampling), one folded-stack file per set, credential and run
        (`python -m bench.profile` sums them up). Only threads holding the GIL are sampled: a
        thread waiting (epoll in the loop, a queue in a worker) is not CPU, and py-spy cannot
        tell otherwise; C code that releases the GIL (hashing a large buffer) is left out too."""
        folder = os.environ.get("BENCH_PROFILE")
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        n = len(list(Path(folder).glob(f"service-{set_name}-{self.auth}-*.folded")))
        out = Path(folder) / f"service-{set_name}-{self.auth}-{n}.folded"
        cmd = [str(BIN / "py-spy"), "record", "--pid", str(self.proc.pid), "-r", "100"]
        proc = subprocess.Popen(
            [*cmd, "--gil", "--threads", "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        return proc

    def stop(self) -> float:
        peak = proc_mem(self.proc.pid, "VmHWM")
        self.close()
        return peak

    def close(self) -> None:
        """Stop the process, whatever state it is in (also after a failed run)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self.log.close()
        self._log_read.close()


class PagePoller:
    """Asks the API what the status page asks, once a second, in a thread of its own (the
    parked list only when files are parked: none are here)."""

    PATHS = ("/v1/status", "/v1/sessions?ended=10", "/v1/bandwidth")

    def __init__(self, base_url: Any, interval: float = 1.0) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=30)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            for path in self.PATHS:
                self._client.get(path)
            self.rounds += 1
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def timed_child(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, the child's CPU seconds from wait4, stdout)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err)
        with proc.stdout as stdout:  # type: ignore[union-attr]
            out = stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{args[0]} failed: {err.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, out.decode()


def rclone(
    set_name: str, src: Path, total: int, azurite: Azurite, tag: str = "", auth: str = "key"
) -> Result:
    container = f"rclone-{set_name}-{auth}{tag}"
    env = dict(os.environ)
    env.update(RCLONE_CONFIG_AZ_TYPE="azureblob", RCLONE_CONFIG_AZ_ENDPOINT=azurite.url)
    if auth == "sas":
        sas = container_sas(azurite, container)
        env["RCLONE_CONFIG_AZ_SAS_URL"] = f"{azurite.url}/{container}?{sas}"
    else:
        env["RCLONE_CONFIG_AZ_ACCOUNT"] = "devstoreaccount1"
        key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
        env["RCLONE_CONFIG_AZ_KEY"] = key
    seconds, cpu, _ = timed_child([str(BIN / "rclone"), "copy", str(src), f"az:{container}"], env)
    return Result(set_name, "rclone", len(list(src.iterdir())), total, seconds, cpu, auth)


def raw(
    set_name: str, src: Path, total: int, azurite: Azurite, tag: str = "", auth: str = "key"
) -> Result:
    container = f"raw-{set_name}-{auth}{tag}"
    env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string)
    cmd = [sys.executable, "-m", "bench.raw", "--container", container, "--src", str(src)]
    if auth == "sas":
        sas = container_sas(azurite, container)
        cmd += ["--container-url", f"{azurite.url}/{container}?{sas}"]
    _, cpu, out = timed_child(cmd, env)
    seconds = json.loads(out)["seconds"]
    return Result(set_name, "raw", len(list(src.iterdir())), total, seconds, cpu, auth)


def idle_watch(root: Path, azurite: Azurite, files: int, seconds: float) -> dict[str, Any]:
    """CPU and RSS of a service watching `files` waiting files at a 1 s poll."""
    svc = Service(
        root, azurite, "idle", poll_interval_s=1.0, min_file_age_s=600, gc_interval_s=30.0
    )
    try:
        svc.http.post("/v1/watch/start", json={"session_name": "idle"}).raise_for_status()
        incoming = svc.settings.nfs_incoming_dir / "idle"
        for i in range(files):
            (incoming / f"w{i:06d}.bin").write_bytes(b"x")
        # Every file seen by a scan, and a second scan past, before measuring.
        svc._wait(lambda: svc.http.get("/v1/sessions/idle").json()["waiting"] == files, 300, 0.5)
        time.sleep(2)
        rss: list[float] = []
        cpu0, started = proc_cpu(svc.proc.pid), time.perf_counter()
        while time.perf_counter() - started < seconds:
            time.sleep(1)
            rss.append(round(proc_mem(svc.proc.pid, "VmRSS"), 1))
        core = (proc_cpu(svc.proc.pid) - cpu0) / (time.perf_counter() - started)
        status = svc.http.get("/v1/sessions/idle").json()
    finally:
        svc.close()
    return {
        "files": files,
        "seconds": seconds,
        "core_percent": round(core * 100, 2),
        "waiting_seen": status["waiting"],
        "rss_mib_first": rss[0],
        "rss_mib_last": rss[-1],
        "rss_mib_max": max(rss),
    }


def _through(relay: Relay, azurite: Azurite, root: Path, container: str, **kw: Any) -> Any:
    return make_settings(
        root,
        azurite,
        container,
        azure_account_url=relay.url,
        azure_connection_string=azurite.connection_string.replace(azurite.url, relay.url),
        poll_interval_s=0.1,
        min_file_age_s=0,
        **kw,
    )


def _wait(condition: Any, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark: timed out")
        time.sleep(interval)


def capped(root: Path, azurite: Azurite, files: int, size: int, cap: int) -> dict[str, Any]:
    """Files uploaded under APP_BANDWIDTH_LIMIT=`cap`: the rate on the wire from the first byte
    to the last, against the cap, and the slowest and fastest 2 s window."""
    relay = Relay(azurite.port).start()
    settings = _through(relay, azurite, root, "capped", bandwidth_limit=cap)
    svc = ServiceProcess(settings, root / "capped.log")
    root.mkdir(parents=True, exist_ok=True)
    try:
        svc.start()
        with svc.client as c:
            c.post("/v1/watch/start", json={"session_name": "cap"}).raise_for_status()
            started = time.monotonic()
            for i in range(files):
                (settings.nfs_incoming_dir / "cap" / f"c{i:03d}.bin").write_bytes(os.urandom(size))
            _wait(lambda: c.get("/v1/status").json()["processed_ok"] >= files, 600)
        first, last = relay.first_and_last(after=started)
        rate = relay.rate(first, last)
        windows = relay.windows(first, last)
        svc.signal(signal.SIGTERM)
    finally:
        if svc.proc is not None:
            svc.signal(signal.SIGKILL)
        relay.stop()
    return {
        "files": files,
        "bytes": files * size,
        "cap_mib_s": cap / MIB,
        "wire_mib_s": round(rate / MIB, 2),
        "of_cap": round(rate / cap, 3),
        "window_2s_min_mib_s": round(min(windows) / MIB, 2) if windows else None,
        "window_2s_max_mib_s": round(max(windows) / MIB, 2) if windows else None,
    }


def resume(root: Path, azurite: Azurite, size: int, cap: int) -> dict[str, Any]:
    """One file of `size` under `cap`, SIGKILLed once 60 % of it went out, restarted: what
    reached storage in all, against the file's size."""
    relay = Relay(azurite.port).start()
    settings = _through(relay, azurite, root, "resume", bandwidth_limit=cap)
    root.mkdir(parents=True, exist_ok=True)
    svc = ServiceProcess(settings, root / "resume.log")
    try:
        svc.start()
        with svc.client as c:
            c.post("/v1/watch/start", json={"session_name": "big"}).raise_for_status()
        before = relay.total
        (settings.nfs_incoming_dir / "big" / "large.bin").write_bytes(os.urandom(size))
        _wait(lambda: relay.total - before >= 0.6 * size, 600, 0.005)
        svc.signal(signal.SIGKILL)
        at_kill = relay.total - before
        svc.start()
        with svc.client as c:
            _wait(lambda: c.get("/v1/status").json()["processed_ok"] >= 1, 600)
        sent = relay.total - before
        svc.signal(signal.SIGTERM)
    finally:
        if svc.proc is not None:
            svc.signal(signal.SIGKILL)
        relay.stop()
    return {
        "bytes": size,
        "cap_mib_s": cap / MIB,
        "killed_at": round(at_kill / size, 3),
        "sent_x_size": round(sent / size, 3),
    }


def page_cost(runs: list[Result], direct: dict[str, Any]) -> dict[str, Any]:
    """The status page's cost: in each run, the CPU the poller added to the small set's upload
    (with minus without, side by side) as a share of a core over the upload's time, the
    median of the runs; and the direct figure of one poll round."""
    with_page = [r for r in runs if (r.set, r.way) == ("small", "service+page")]
    if not with_page:
        return {}
    auth = with_page[0].auth  # the page runs beside the first credential's plain runs
    without = [r for r in runs if (r.set, r.way, r.auth) == ("small", "service", auth)]
    added = [
        100 * (w.cpu_seconds - o.cpu_seconds) / w.seconds
        for o, w in zip(without, with_page, strict=True)
    ]
    return {
        "runs": len(with_page),
        "core_percent_each_run": [round(a, 2) for a in added],
        "core_percent_side_by_side": round(statistics.median(added), 2),
        **direct,
    }


def side_by_side(
    service: Service,
    azurite: Azurite,
    name: str,
    src: Path,
    total: int,
    run: int,
    auth: str,
    page: bool = False,
) -> list[Result]:
    """One run of a set the three ways, one after the other: each sees the same machine load.
    The order turns from run to run (Azurite slows down as it fills up). With `page`, the
    service is run a second time, beside itself, with the status page's poller."""
    out: list[Result] = []
    tag = f"-{run}"
    for way in WAYS[run % 3 :] + WAYS[: run % 3]:
        if way == "service":
            out.append(service.upload(name, src, total, tag))
            if page:
                out.append(service.upload(name, src, total, tag, page=True))
        elif way == "rclone":
            out.append(rclone(name, src, total, azurite, tag, auth))
        else:
            out.append(raw(name, src, total, azurite, tag, auth))
    return out


def medians(runs: list[Result]) -> list[Result]:
    """One Result per (set, credential, way): the median seconds and CPU seconds of its runs."""
    out: list[Result] = []
    for key in dict.fromkeys((r.set, r.auth, r.way) for r in runs):
        mine = [r for r in runs if (r.set, r.auth, r.way) == key]
        seconds = statistics.median(r.seconds for r in mine)
        cpu = statistics.median(r.cpu_seconds for r in mine)
        first = mine[0]
        out.append(Result(key[0], key[2], first.files, first.bytes, seconds, cpu, key[1]))
    return out


def print_table(results: list[Result], peak_rss: float, idle: dict[str, Any]) -> None:
    print(
        f"\n{'set':<6} {'auth':<4} {'way':<12} {'files':>6} {'MiB':>8} {'seconds':>8} "
        f"{'MiB/s':>8} {'files/s':>8} {'CPU s':>7} {'CPU s/GiB':>9}"
    )
    for r in results:
        print(
            f"{r.set:<6} {r.auth:<4} {r.way:<12} {r.files:>6} {r.bytes / MIB:>8.1f} "
            f"{r.seconds:>8.2f} {r.mib_s:>8.1f} {r.files_s:>8.1f} {r.cpu_seconds:>7.2f} "
            f"{r.cpu_s_per_gib:>9.2f}"
        )
    print()
    for set_name, auth in dict.fromkeys((r.set, r.auth) for r in results):
        by = {r.way: r for r in results if (r.set, r.auth) == (set_name, auth)}
        s, rc, rw = by["service"], by["rclone"], by["raw"]
        print(
            f"{set_name} ({auth}): time service/rclone {s.seconds / rc.seconds:.2f} "
            f"(rclone/service {rc.seconds / s.seconds:.2f}), "
            f"service rate / raw rate {rw.seconds / s.seconds:.2f}; "
            f"CPU service/rclone {s.cpu_seconds / rc.cpu_seconds:.2f} "
            f"(CPU s/GiB {s.cpu_s_per_gib:.2f} vs {rc.cpu_s_per_gib:.2f}; "
            f"ms per file {1000 * s.cpu_seconds / s.files:.2f} vs "
            f"{1000 * rc.cpu_seconds / rc.files:.2f})"
        )
    print(f"service peak RSS (VmHWM, whole transfer run): {peak_rss:.1f} MiB")
    print(
        f"idle watch of {idle['files']} waiting files at 1 s poll: {idle['core_percent']:.2f}% "
        f"of a core over {idle['seconds']:.0f} s; RSS first {idle['rss_mib_first']} MiB, "
        f"last {idle['rss_mib_last']} MiB, max {idle['rss_mib_max']} MiB"
    )


def print_page(page: dict[str, Any]) -> None:
    """The status page's cost, when the small set ran."""
    if not page:
        return
    print(
        f"status page polled every 1 s while the small set uploads: "
        f"{page['core_percent_side_by_side']:+.2f} % of a core (CPU with - without in each "
        f"of {page['runs']} runs side by side, median; each run "
        f"{page['core_percent_each_run']}); one poll round with "
        f"{page['files_in_flight']} files in flight and {page['files_waiting']} waiting: "
        f"{page['cpu_ms_per_round']:.2f} ms of CPU = {page['core_percent_at_1_hz']:.2f} % "
        f"of a core at one round a second ({page['rounds']} rounds)"
    )


def print_extra_rows(
    idle_large: dict[str, Any] | None, replicas_row: dict[str, Any] | None
) -> None:
    """The rows run only when asked: the large idle watch, the replicas."""
    if idle_large is not None:
        print(
            f"idle watch of {idle_large['files']} waiting files: {idle_large['core_percent']:.2f}%"
            f" of a core; RSS first {idle_large['rss_mib_first']} MiB, last "
            f"{idle_large['rss_mib_last']} MiB"
        )
    if replicas_row is not None:
        r3 = replicas_row
        print(
            f"replicas, small set: one {r3['one_replica_seconds']} s, three "
            f"{r3['three_replicas_seconds']} s (three/one throughput {r3['three_over_one']}); "
            f"shares {r3['shares']} (largest departure from a third {r3['share_spread']:.1%})"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="the service against rclone and the raw SDK")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the file counts")
    parser.add_argument("--tiny", action="store_true", help="a few files: proves the bench works")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--idle-files", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--idle-files-large", type=int, default=100_000, help="a second idle row (0: none)"
    )
    parser.add_argument("--sets", default="small,large")
    parser.add_argument(
        "--auth", default="key,sas", help="credentials to run each set with: key, sas or both"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs of each set; the table shows medians"
    )
    parser.add_argument("--no-uplink", action="store_true", help="skip the cap and resume rows")
    parser.add_argument("--no-replicas", action="store_true", help="skip the replicas row")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="APP_X=VALUE",
        help="extra settings for the service under test (to compare against the defaults)",
    )
    args = parser.parse_args(argv)

    sets = {"small": (1000, 64 * 1024), "large": (4, 128 * MIB)}
    # (files, size, cap) under a cap; (size, cap) for the resume.
    cap_set, resume_set = (4, 32 * MIB, 20 * MIB), (256 * MIB, 32 * MIB)
    if args.tiny:
        sets = {"small": (20, 64 * 1024), "large": (2, 2 * MIB)}
        args.idle_files, args.idle_seconds, args.idle_files_large = 200, 2.0, 1000
        args.runs = min(args.runs, 2)
        cap_set, resume_set = (2, 4 * MIB, 4 * MIB), (16 * MIB, 4 * MIB)
    chosen = [s for s in args.sets.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="nwu-bench-"))
    azurite = Azurite()
    azurite.start()
    auths = [a for a in args.auth.split(",") if a]
    results: list[Result] = []
    runs: list[Result] = []
    services: dict[str, Service] = {}
    page: dict[str, Any] = {}
    try:
        extra = dict(kv.split("=", 1) for kv in args.service_env)
        for auth in auths:
            # The sets are hard-linked into incoming (no copy in the timing), and a file with
            # more than one link is left alone unless allowed.
            services[auth] = Service(
                work / f"svc-{auth}",
                azurite,
                f"service-{auth}",
                extra,
                auth,
                poll_interval_s=0.1,
                min_file_age_s=0,
                allow_hard_links=True,
            )
        for i, name in enumerate(chosen):
            count, size = sets[name]
            count = max(1, round(count * args.scale))
            src = work / "src" / name
            total = make_set(src, count, size, seed=i)
            for run in range(args.runs):
                for auth, service in services.items():
                    with_page = name == "small" and auth == auths[0]
                    runs += side_by_side(service, azurite, name, src, total, run, auth, with_page)
        results = medians(runs)
        if "small" in chosen:
            small = work / "src" / "small"
            first = services[auths[0]]
            page = page_cost(runs, first.poll_round_cpu(small, 50 if args.tiny else 300))
        peak_rss = max(service.stop() for service in services.values())
        idle = idle_watch(work / "idle", azurite, args.idle_files, args.idle_seconds)
        idle_large = None
        if args.idle_files_large:
            large = work / "idle-large"
            idle_large = idle_watch(large, azurite, args.idle_files_large, args.idle_seconds)
        replicas_row: dict[str, Any] | None = None
        if not args.no_replicas and "small" in chosen:
            small = work / "src" / "small"
            replicas_row = replicas.row(work / "replicas", azurite, small, args.runs)
        uplink: dict[str, Any] = {}
        if not args.no_uplink:
            uplink["capped"] = capped(work / "capped", azurite, *cap_set)
            uplink["resume"] = resume(work / "resume", azurite, *resume_set)
    finally:
        for service in services.values():
            service.close()
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_table(results, peak_rss, idle)
    print_page(page)
    print_extra_rows(idle_large, replicas_row)
    if "capped" in uplink:
        c, r = uplink["capped"], uplink["resume"]
        each = c["bytes"] // c["files"] // MIB
        print(
            f"under a {c['cap_mib_s']:g} MiB/s cap: {c['files']} x {each}"
            f" MiB at {c['wire_mib_s']} MiB/s on the wire ({c['of_cap']:.3f} of the cap; 2 s "
            f"windows {c['window_2s_min_mib_s']}..{c['window_2s_max_mib_s']} MiB/s)"
        )
        print(
            f"resume: {r['bytes'] // MIB} MiB under a {r['cap_mib_s']:g} MiB/s cap, killed at "
            f"{r['killed_at']:.2f}: {r['sent_x_size']:.3f} x the file sent in all"
        )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "results": [
            {**asdict(r), "mib_s": r.mib_s, "files_s": r.files_s, "cpu_s_per_gib": r.cpu_s_per_gib}
            for r in results
        ],
        "runs": [asdict(r) for r in runs],
        "service_peak_rss_mib": peak_rss,
        "status_page": page,
        "idle_watch": idle,
        "idle_watch_large": idle_large,
        "uplink": uplink,
        "replicas": replicas_row,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
