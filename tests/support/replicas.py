"""N replicas of the service on one share, as real processes (APP_COORDINATION=azure).

One backing folder is the NFS export. Each replica sees it through its own FUSE mount
(`faultfs`) with its own attribute and entry cache, as separate NFS clients each have theirs,
and reaches Azurite through its own relay (`http_relay`), which counts its requests, pairs
them with their answers (commits are counted from 2xx answers) and can cut it off from
storage while NFS stays. The recorder writes straight into the backing folder, as a client
of its own. `fuse=False` puts every replica on the backing folder itself (one client).
"""

import contextlib
import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import ContainerClient

from nfs_watcher_uploader.config import Settings
from tests.support.faultfs import Faults, fuse_available, mounted
from tests.support.helpers import Azurite, ServiceProcess, make_settings, wait_for
from tests.support.http_relay import HttpRelay, Request

# Each replica's attribute and entry cache (FUSE attr_timeout/entry_timeout), like actimeo.
CACHE_S = 1.0
# The exit status of a lost incarnation (service.LOST_EXIT_CODE).
LOST_EXIT = 75


@dataclass
class Replica:
    index: int
    settings: Settings
    process: ServiceProcess
    relay: HttpRelay
    mount: Path
    faults: Faults

    @property
    def log(self) -> Path:
        return self.process.log

    @property
    def running(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def api(self) -> httpx.Client:
        return self.process.client

    def get(self, path: str) -> httpx.Response:
        with self.api() as c:
            return c.get(path)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        with self.api() as c:
            return c.post(path, **kw)

    def status(self) -> dict[str, Any]:
        r = self.get("/v1/status")
        assert r.status_code == 200, r.text
        return r.json()

    def member(self) -> str | None:
        try:
            return self.status().get("member")
        except (httpx.HTTPError, AssertionError):
            return None


@dataclass
class Cluster:
    """N replicas on one share. `close` stops everything it started."""

    tmp_path: Path
    azurite: Azurite
    container: str
    size: int = 3
    fuse: bool = True
    cache_s: float = CACHE_S
    overrides: dict[str, Any] = field(default_factory=dict[str, Any])
    replicas: list[Replica] = field(default_factory=list[Replica])
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def share(self) -> Path:
        return self.tmp_path / "share"

    @property
    def incoming(self) -> Path:
        return self.share / "incoming"

    @property
    def processing(self) -> Path:
        return self.share / ".processing"

    @property
    def control(self) -> str:
        return f"{self.container}-ctl"

    def build(self) -> "Cluster":
        if self.fuse and (why := fuse_available()) is not None:
            pytest.skip(f"FUSE is not available here: {why}")
        self.incoming.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            self.replicas.append(self._replica(i))
        return self

    def _replica(self, i: int) -> Replica:
        faults = Faults(seed=i)
        if self.fuse:
            mount = self.tmp_path / f"mnt{i}"
            self._stack.enter_context(mounted(self.share, mount, faults, self.cache_s))
        else:
            mount = self.share
        relay = HttpRelay(self.azurite.port).start()
        self._stack.callback(relay.stop)
        values: dict[str, Any] = {
            "azure_account_url": relay.url,
            "azure_connection_string": self.azurite.connection_string.replace(
                self.azurite.url, relay.url
            ),
            "nfs_incoming_dir": mount / "incoming",
            "nfs_processing_root": mount / ".processing",
            "local_staging_root": self.tmp_path / f"staging{i}",
            "coordination": "azure",
            "member_name": f"replica-{i}",
            "poll_interval_s": 0.2,
            "min_file_age_s": 1.5,
            "gc_interval_s": 1.0,
            "retry_base_s": 0.2,
            "retry_max_s": 2.0,
            "nfs_timeout_s": 5.0,
            "shutdown_grace_s": 5.0,
            "drain_timeout_s": 600.0,
            "worker_concurrency": 4,
        }
        values.update(self.overrides)
        settings = make_settings(self.tmp_path, self.azurite, self.container, **values)
        process = ServiceProcess(settings, self.tmp_path / f"replica{i}.log")
        self._stack.callback(self._stop_quietly, process)
        return Replica(i, settings, process, relay, mount, faults)

    @staticmethod
    def _stop_quietly(process: ServiceProcess) -> None:
        proc = process.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(30)
        process.proc = None

    def start(self, *which: int, wait: bool = True) -> None:
        """Start replicas (all by default), then wait until each is ready."""
        chosen = [self.replicas[i] for i in which] if which else self.replicas
        for r in chosen:
            r.process.start(wait_ready=False)
        if wait:
            for r in chosen:
                wait_for(r.process.ready, timeout=90, what=f"replica {r.index} ready")

    def close(self) -> None:
        self._stack.close()

    # --- what storage holds, and what went over the wire ---------------------------------------

    def data(self) -> ContainerClient:
        return self.azurite.container(self.container)

    def blobs(self) -> dict[str, bytes]:
        container = self.data()
        return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}

    def blob_names(self) -> list[str]:
        return [b.name for b in self.data().list_blobs()]

    def commits(self) -> list[Request]:
        """Every commit storage answered 2xx, over every replica's relay."""
        return [c for r in self.replicas for c in r.relay.commits(self.container)]

    def commit_counts(self) -> Counter[str]:
        return Counter(c.blob for c in self.commits())

    def uploaded_lines(self) -> Counter[str]:
        """How many times each blob was counted as uploaded, over every replica's log (the
        line the service writes when it counts a file)."""
        counts: Counter[str] = Counter()
        for r in self.replicas:
            if not r.log.exists():
                continue
            for line in r.log.read_text(errors="replace").splitlines():
                if '"message": "Uploaded ' in line:
                    name = line.split('"message": "Uploaded ', 1)[1].split('"', 1)[0]
                    counts[name] += 1
        return counts

    def leftovers(self) -> list[str]:
        """Work files anywhere in the share: incoming, or any member's claimed, committed or
        parked tree (not ledgers, jobs, markers)."""
        out: list[str] = []
        for p in self.incoming.rglob("*"):
            if p.is_file():
                out.append(str(p.relative_to(self.share)))
        owners = self.processing / "owners"
        for tree in [self.processing, *(owners.iterdir() if owners.exists() else [])]:
            for p in tree.rglob("*"):
                rel = p.relative_to(tree)
                if not p.is_file() or rel.parts[0] in _NOT_WORK:
                    continue
                if tree == self.processing and rel.parts[0] == "owners":
                    continue
                out.append(str(p.relative_to(self.share)))
        return out


# What a member tree holds that is not a file to upload.
_NOT_WORK = frozenset(
    {
        "_ledgers",
        "_reports",
        "_outbox",
        "sessions.json",
        "block-id.key",
        "coordination",
        "single-replica",
    }
)


@contextlib.contextmanager
def cluster(
    tmp_path: Path, azurite: Azurite, container: str, size: int = 3, **kw: Any
) -> Iterator[Cluster]:
    built = Cluster(tmp_path, azurite, container, size, **kw).build()
    try:
        yield built
    finally:
        built.close()


def write(path: Path, data: bytes) -> None:
    """Write a file as a recorder would (straight into the backing folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until `condition` holds (a deadline, never a fixed sleep); returns when it did."""
    wait_for(condition, timeout=timeout, interval=0.1, what=what)
    return time.monotonic()
