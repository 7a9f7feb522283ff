"""A session in the cloud as a test sees it: started over the API, its blobs and manifest read
straight from Azurite, and the real `verify` command line."""

import json
import subprocess
from typing import Any

from azure.storage.blob import ContainerClient

from .helpers import ROOT, RunningService, service_env, wait_for, write_file


def manifest_of(container: ContainerClient, date: str, session: str) -> dict[str, Any] | None:
    blob = container.get_blob_client(f"{date}/{session}.manifest.json")
    if not blob.exists():
        return None
    return json.loads(blob.download_blob().readall())


def wait_manifest(
    container: ContainerClient, date: str, session: str, complete: bool | None = None
) -> dict[str, Any]:
    """The session's manifest once it is there (and says `complete`, if given)."""

    def ready() -> dict[str, Any] | None:
        m = manifest_of(container, date, session)
        return m if m is not None and complete in (None, m["complete"]) else None

    found = wait_for(ready, timeout=120, what=f"the manifest of {session}")
    assert found is not None
    return found


def blobs_of(container: ContainerClient, prefix: str) -> dict[str, bytes]:
    return {
        b.name: container.download_blob(b.name).readall()
        for b in container.list_blobs(name_starts_with=prefix)
    }


def start_session(running: RunningService, name: str) -> str:
    r = running.post("/v1/watch/start", json={"session_name": name})
    assert r.status_code == 200, r.text
    return r.json()["date_prefix"]


def run_verify(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, configured like the service."""
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader"), "verify", *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def drain_one_session(running: Any, settings: Any, name: str) -> str:
    """Start session `name`, upload one file, stop it; returns its date."""
    date = running.post("/v1/watch/start", json={"session_name": name}).json()["date_prefix"]
    write_file(settings.nfs_incoming_dir / name / "a.bin", b"a" * 1000)
    wait_for(lambda: running.service.pipeline.stats.uploaded == 1, timeout=30, what="upload")
    assert running.post("/v1/watch/stop").status_code == 200
    return date
