"""docker-compose.yaml's mounts, made with `mount --bind` as Docker makes them: its layout
claims and uploads, and the old layout (one bind mount per folder) is refused at start with
exit status 1 and a line naming the cause and the fix, since no claim could ever succeed."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.helpers import (
    ROOT,
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    wait_for,
    write_file,
)
from tests.support.mounts import bind_mount

# docker-compose.yaml before issue 19: Linux refuses a rename from one to the other (EXDEV).
OLD_VOLUMES = [
    "./data/incoming:/mnt/nfs/incoming",
    "./data/.processing:/mnt/nfs/.processing",
    "staging:/mnt/staging",
]


def _app() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["app"]


@contextmanager
def _compose_mounts(tmp_path: Path, volumes: list[str]) -> Iterator[Path]:
    """The container's filesystem as Docker would lay it out for `volumes`: each bind source
    below the project folder (named volumes below volumes/) mounted at its target below the
    returned root. The project's ./data/incoming and ./data/.processing exist, as
    `make docker-up` makes them."""
    project, root = tmp_path / "project", tmp_path / "rootfs"
    for folder in ("incoming", ".processing"):
        (project / "data" / folder).mkdir(parents=True)
    pairs: list[tuple[Path, Path]] = []
    for volume in volumes:
        source, target = volume.split(":")[:2]
        host = project / source if source.startswith(".") else tmp_path / "volumes" / source
        pairs.append((host, root / target.lstrip("/")))
    with ExitStack() as stack:
        for host, target in sorted(pairs, key=lambda p: len(p[1].parts)):
            host.mkdir(parents=True, exist_ok=True)  # Docker creates a missing bind source
            target.mkdir(parents=True, exist_ok=True)
            stack.enter_context(bind_mount(host, target))
        yield root


def _settings(tmp_path: Path, azurite: Azurite, container: str, root: Path) -> Any:
    env = _app()["environment"]
    inside = {
        name: root / env[var].lstrip("/")
        for name, var in (
            ("nfs_incoming_dir", "APP_NFS_INCOMING_DIR"),
            ("nfs_processing_root", "APP_NFS_PROCESSING_ROOT"),
            ("local_staging_root", "APP_LOCAL_STAGING_ROOT"),
        )
    }
    return make_settings(tmp_path, azurite, container, **inside)


def test_the_compose_layout_claims_and_uploads(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    volumes = _app()["volumes"]
    with _compose_mounts(tmp_path, volumes) as root:
        settings = _settings(tmp_path, azurite, container_name, root)
        service = ServiceProcess(settings, tmp_path / "service.log")
        try:
            service.start()
            with service.client as api:
                date = api.post("/v1/watch/start", json={"session_name": "c"}).json()
            # The recorder writes on the host side of the mount.
            write_file(tmp_path / "project" / "data" / "incoming" / "c" / "a.bin", b"compose")
            blob = f"{date['date_prefix']}/c/a.bin"
            container = azurite.container(container_name)
            assert wait_for(lambda: blob_bytes(container, blob), what=blob) == b"compose"
        finally:
            if service.proc is not None:
                service.proc.terminate()
                service.proc.wait(30)


def test_one_bind_mount_per_folder_is_refused_at_start(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    with _compose_mounts(tmp_path, OLD_VOLUMES) as root:
        settings = _settings(tmp_path, azurite, container_name, root)
        service = ServiceProcess(settings, tmp_path / "service.log")
        started = time.monotonic()
        service.start(wait_ready=False)
        assert service.proc is not None
        try:
            status = service.proc.wait(30)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            raise
        assert time.monotonic() - started < 30
        log = service.log.read_text()
        assert status == 1, log
        assert "two mounts" in log and "Invalid cross-device link" in log, log
        assert "Mount the share once" in log
        # Nothing of the probe is left behind, on either side.
        data = tmp_path / "project" / "data"
        assert not any(data.rglob("*probe*"))
