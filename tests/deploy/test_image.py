"""The container image runs like the pod (make image-test)."""

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import (
    ROOT,
    Azurite,
    blob_bytes,
    free_port,
    wait_for,
    write_file,
)
from tests.support.tools import missing, require

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]


IMAGE = "localhost/nfs-watcher-uploader:test"


REAL_BASE = "docker.io/library/python:3.12-slim-bookworm"


# Only to choose the base image: the service under test talks to 127.0.0.1 alone.
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"


CONTAINER_ENV = Path(
    os.environ.get("CONTAINER_ENV", ROOT.parent / "shared" / "tools" / "container-env")
)


GRACE_S = 5  # APP_SHUTDOWN_GRACE_S in the container


# main.run gives open HTTP requests 5 s, then the uploads the grace; the rest is slack.
STOP_WITHIN_S = 5 + GRACE_S + 5


def _registry_reachable() -> bool:
    try:
        httpx.get(REGISTRY_PROBE, timeout=5)
        return True
    except httpx.HTTPError:
        return False


def _engine() -> tuple[list[str], str]:
    """The podman command line, and the base image to build on."""
    if "PYTHON_IMAGE" in os.environ:
        podman = os.environ.get("PODMAN") or require("podman", "install podman")
        return shlex.split(podman), os.environ["PYTHON_IMAGE"]
    if _registry_reachable():
        return [require("podman", "install podman (apt-get install podman)")], REAL_BASE
    if not CONTAINER_ENV.is_file():
        missing(f"no image registry reachable and no {CONTAINER_ENV} to build a base image")
    made = subprocess.run(["bash", str(CONTAINER_ENV)], capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"podman cannot work on this machine: {made.stderr.strip()[-1000:]}")
    printed = subprocess.run(
        ["bash", str(CONTAINER_ENV), "--print-env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(shlex.split(line)[0].split("=", 1) for line in printed.splitlines() if "=" in line)
    return shlex.split(env["PODMAN"]), env["PYTHON_IMAGE"]


def _run(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(args)}\n{result.stdout[-3000:]}{result.stderr}"
    return result.stdout.strip()


@dataclass
class Built:
    podman: list[str]
    tag: str
    size: int
    base: str
    base_size: int

    def __str__(self) -> str:
        return (
            f"image {self.tag}: {self.size / 1e6:.0f} MB; base {self.base}: "
            f"{self.base_size / 1e6:.0f} MB; added by the Dockerfile: "
            f"{(self.size - self.base_size) / 1e6:.0f} MB"
        )


@pytest.fixture(scope="module")
def image() -> Built:
    """Build the image; podman reuses the layers that did not change."""
    podman, base = _engine()
    _run(
        *podman,
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=1500,
    )
    size = int(_run(*podman, "image", "inspect", "--format", "{{.Size}}", IMAGE))
    base_size = int(_run(*podman, "image", "inspect", "--format", "{{.Size}}", base))
    return Built(podman, IMAGE, size, base, base_size)


@pytest.fixture
def container_name(image: Built) -> Iterator[str]:
    podman = image.podman
    name = f"nwu-test-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    subprocess.run([*podman, "rm", "-f", "-t", "0", name], capture_output=True)


def _mount_dir(path: Path, user: str) -> Path:
    """A host folder the image's user can write, as the README asks of the NFS export."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        uid, _, gid = user.partition(":")
        os.chown(path, int(uid), int(gid or uid))
    else:
        path.chmod(0o777)
    return path


def test_the_image_runs_like_the_pod(
    image: Built,
    container_name: str,
    azurite: Azurite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    podman, tag = image.podman, image.tag
    user = _run(*podman, "image", "inspect", "--format", "{{.Config.User}}", tag)
    assert user.split(":")[0] not in ("", "0", "root"), f"image runs as {user!r}"
    nfs = _mount_dir(tmp_path / "nfs", user)
    _mount_dir(nfs / "incoming", user)  # the share has it: the service never creates it
    staging = _mount_dir(tmp_path / "staging", user)
    port = free_port()
    container = f"c{os.getpid()}"
    settings = {
        "APP_AZURE_ACCOUNT_URL": azurite.url,
        "APP_AZURE_CONTAINER": container,
        "APP_AZURE_AUTH": "connection-string",
        "APP_AZURE_CONNECTION_STRING": azurite.connection_string,
        "APP_HOST": "127.0.0.1",
        "APP_PORT": str(port),
        "APP_POLL_INTERVAL_S": "0.2",
        "APP_MIN_FILE_AGE_S": "0.5",
        "APP_GC_INTERVAL_S": "1",
        "APP_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    _run(
        *podman,
        "run",
        "--detach",
        "--name",
        container_name,
        "--read-only",
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        f"{nfs}:/mnt/nfs",
        "--volume",
        f"{staging}:/mnt/staging",
        *(arg for name, value in settings.items() for arg in ("--env", f"{name}={value}")),
        tag,
    )

    def logs() -> str:
        done = subprocess.run([*podman, "logs", container_name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def ready() -> bool:
        state = _run(*podman, "inspect", "--format", "{{.State.Status}}", container_name)
        assert state == "running", f"container {state}:\n{logs()[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=90, what="the container to be ready")
    assert _run(*podman, "exec", container_name, "id", "-u") == user.split(":")[0]
    read_only = "import os; print(os.statvfs('/').f_flag & os.ST_RDONLY)"
    assert _run(*podman, "exec", container_name, "python", "-c", read_only) == "1"
    no_pip = "import importlib.util; print(importlib.util.find_spec('pip'))"  # in the venv
    assert _run(*podman, "exec", container_name, "python", "-c", no_pip) == "None"

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
        started = api.post("/v1/watch/start", json={"session_name": "image"})
        assert started.status_code == 200, started.text
        date = started.json()["date_prefix"]
        files = {"big.bin": os.urandom(3 * 1024 * 1024 + 17), "small.bin": os.urandom(1000)}
        for name, data in files.items():  # the big one goes through the staging mount
            write_file(nfs / "incoming" / "image" / name, data)
        blobs = azurite.container(container)
        for name, data in files.items():
            wait_for(
                lambda n=name, d=data: blob_bytes(blobs, f"{date}/image/{n}") == d,
                timeout=60,
                what=f"{name} byte-exact in Azurite",
            )
        assert "files_processed_total" in api.get("/metrics").text
        # The status page, its files and the docs' Swagger UI are in the image (package data).
        page = api.get("/")
        assert page.status_code == 200 and "/static/status.js" in page.text
        for name in (
            "status.js",
            "status.css",
            "docs.js",
            "swagger-ui-bundle.js",
            "swagger-ui.css",
        ):
            assert api.get(f"/static/{name}").status_code == 200, name
        assert api.get("/docs").status_code == 200
    # `status` in the container reads the API at its own APP_PORT by default.
    shown = subprocess.run(
        [*podman, "exec", container_name, "nfs-watcher-uploader", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "healthy | ready" in shown.stdout and "image" in shown.stdout

    begun = time.monotonic()
    _run(*podman, "stop", "--time", str(STOP_WITHIN_S + 10), container_name, timeout=60)
    took = time.monotonic() - begun
    code = _run(*podman, "inspect", "--format", "{{.State.ExitCode}}", container_name)
    assert code == "0", f"exit code {code} (137: SIGTERM ignored and killed):\n{logs()[-3000:]}"
    assert took < STOP_WITHIN_S, f"took {took:.1f} s to stop"
    assert '"Stopped: Service' in logs()
    with capsys.disabled():
        print(f"\n{image}; SIGTERM to exit: {took:.1f} s")
