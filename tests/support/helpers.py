"""Shared test helpers: Azurite, a real server on a free port, polling with a deadline."""

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    generate_container_sas,
)

from nfs_watcher_uploader.api.limits import server_options
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.main import create_app
from nfs_watcher_uploader.nfs.copying import Staged, copy_and_hash
from nfs_watcher_uploader.service import Service

ROOT = Path(__file__).resolve().parents[2]  # the repository
AZURITE_BIN = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's public, documented development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for[T](
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}: {last!r}")


@dataclass
class Azurite:
    """A real Azurite blob service on 127.0.0.1 that the tests start and stop themselves."""

    port: int = field(default_factory=free_port)
    location: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.url};"
        )

    def start(self) -> None:
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        self.proc = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                *storage,
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._accepting, timeout=30, what="Azurite to listen")

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def container_sas(self, container: str, permission: str) -> str:
        """A service SAS for `container` with exactly `permission` (e.g. "cw"), valid 1 h."""
        expiry = datetime.now(UTC) + timedelta(hours=1)
        return generate_container_sas(
            ACCOUNT, container, account_key=KEY, permission=permission, expiry=expiry
        )

    def container(self, name: str) -> ContainerClient:
        return BlobServiceClient.from_connection_string(
            self.connection_string
        ).get_container_client(name)


def make_settings(root: Path, azurite: Azurite, container: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "azure_account_url": azurite.url,
        "azure_container": container,
        "azure_connection_string": azurite.connection_string,
        "nfs_incoming_dir": root / "incoming",
        "nfs_processing_root": root / ".processing",
        "local_staging_root": root / "staging",
        "poll_interval_s": 0.1,
        "min_file_age_s": 0.0,
        "gc_interval_s": 0.5,
        "retry_base_s": 0.1,
        "retry_max_s": 1.0,
        "shutdown_grace_s": 5.0,
    }
    values.update(overrides)
    # The share's incoming folder exists before the service starts (it never creates it).
    Path(values["nfs_incoming_dir"]).mkdir(parents=True, exist_ok=True)
    return Settings(**values)


@dataclass
class RunningService:
    """The real app served by uvicorn on a free port, in a background thread."""

    settings: Settings
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread
    client: httpx.Client
    app: Any

    @property
    def service(self) -> Service:
        return self.app.state.service

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.client.close()
        assert not self.thread.is_alive(), "server did not stop"


def serve(settings: Settings, wait_ready: bool = True, **options: Any) -> RunningService:
    app = create_app(settings, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, lifespan="on", timeout_graceful_shutdown=10, **server_options()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=10, headers=auth_headers(settings))
    running = RunningService(settings, base, server, thread, client, app)
    wait_for(lambda: server.started, timeout=30, what="server to start")
    if wait_ready:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30, what="readyz 200")
    return running


def auth_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header for the API token in `settings` (none when it has none)."""
    if settings.api_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}


def write_file(path: Path, data: bytes) -> Path:
    """Write a file the way a recorder would: create it, write it, close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(tmp_fd, data)
    finally:
        os.close(tmp_fd)
    return path


def blob_bytes(container: ContainerClient, name: str) -> bytes | None:
    blob = container.get_blob_client(name)
    if not blob.exists():
        return None
    return blob.download_blob().readall()


KEPT_IN_PROCESSING = (
    "_completed",
    "sessions.json",
    "block-id.key",
    "_ledgers",
    "_reports",
    "_outbox",
    "single-replica",  # the running process's mark (nfs/single_mark), not work
)


def leftover_files(root: Path) -> list[str]:
    """Files still in incoming or in `.processing` (markers excluded: GC deletes them; and the
    ledgers, reports and webhook outbox, which are not files to upload)."""
    out: list[str] = []
    for sub in ("incoming", ".processing"):
        base = root / sub
        if not base.exists():
            continue
        for p in base.rglob("*"):
            rel = p.relative_to(root)
            if p.is_file() and rel.parts[1] not in KEPT_IN_PROCESSING:
                out.append(str(rel))
    return out


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that configures a service subprocess like `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "OTEL_"))}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, frozenset):
            value = ",".join(sorted(value))
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"APP_{name.upper()}"] = str(value)
    env["OTEL_SDK_DISABLED"] = "true"
    return env


@dataclass
class ServiceProcess:
    """The service as a real process (`python -m nfs_watcher_uploader`), for kill tests."""

    settings: Settings
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict[str, str])

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            timeout=10,
            headers=auth_headers(self.settings),
        )

    def start(self, wait_ready: bool = True) -> None:
        env = service_env(self.settings)
        env["APP_HOST"], env["APP_PORT"] = "127.0.0.1", str(self.port)
        env.update(self.extra_env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            wait_for(self.ready, timeout=60, what="service process ready")

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            with self.client as c:
                return c.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def peak_rss(self) -> int:
        """The process's peak resident set size so far, in bytes (VmHWM)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(kib) * 1024

    def signal(self, sig: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code


def block_permits_free(storage: Any) -> int:
    """Block permits of `storage` not held right now (all of them when no upload runs): a
    permit that never came back would shrink this for good."""
    return storage.blocks._budget._value


def session_view(running: "RunningService", name: str) -> dict[str, Any]:
    """GET /v1/sessions/<name>, which must answer 200."""
    r = running.get(f"/v1/sessions/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def parked_files(running: "RunningService") -> list[dict[str, Any]]:
    """GET /v1/files/failed, which must answer 200."""
    r = running.get("/v1/files/failed")
    assert r.status_code == 200, r.text
    return r.json()["files"]


def until(
    condition: Callable[[], object],
    timeout: float,
    why: Callable[[], str],
    step: Callable[[], object] | None = None,
) -> None:
    """Poll `condition` until true (calling `step` between looks); else fail with `why()`,
    what happened instead."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(why())
        if step is not None:
            step()
        time.sleep(0.1)


class HeldCopy:
    """A copy seam that holds the copy of `name` until released (worker_concurrency=1 makes
    everything else wait in the queue behind it), so that a test can change what waits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, src: Path, dst: Path, *args: Any) -> Staged:
        if src.name == self.name:
            self.started.set()
            self.release.wait(30)
        return copy_and_hash(src, dst, *args)


def on_service_loop(running: "RunningService", coro: Any, timeout: float = 30) -> Any:
    """Run `coro` on the service's event loop (the server thread) and return its result."""
    task = running.service._run_task  # pyright: ignore[reportPrivateUsage]
    assert task is not None
    return asyncio.run_coroutine_threadsafe(coro, task.get_loop()).result(timeout)


def put_blob(container: ContainerClient, name: str, data: bytes) -> None:
    """A blob as this service would have committed it (Content-MD5 = MD5 of the bytes)."""
    md5 = bytearray(hashlib.md5(data).digest())
    container.upload_blob(name, data, content_settings=ContentSettings(content_md5=md5))
