"""What replicas cannot work with stops start-up with exit status 1 and a line naming the
variable, before anything is created (no mark on the share, no control container); and a
single replica refuses a share that replicas use."""

import subprocess
import time
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from nfs_watcher_uploader.config import Settings
from tests.support.helpers import (
    ROOT,
    Azurite,
    ServiceProcess,
    free_port,
    make_settings,
    service_env,
    wait_for,
)


def _exit_of(settings: Settings, tmp_path: Path) -> tuple[int, str]:
    """Run the service until it exits (within 60 s); its status and stderr. Nothing on the
    share may have changed."""
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    env = service_env(settings) | {"APP_PORT": str(free_port()), "APP_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "start-up created something"
    return proc.returncode, stderr


def _control_exists(azurite: Azurite, container: str) -> bool:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return service.get_container_client(f"{container}-ctl").exists()


def test_a_single_replica_refuses_a_share_that_replicas_use(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(tmp_path, azurite, container_name)
    mark = settings.nfs_processing_root / "coordination"
    mark.parent.mkdir(parents=True)
    mark.write_bytes(b"azure\n")
    status, stderr = _exit_of(settings, tmp_path)
    assert status == 1, stderr
    assert "APP_COORDINATION=azure" in stderr and "Running N replicas" in stderr


def test_overwrite_on_name_conflict_is_refused_with_replicas(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(
        tmp_path, azurite, container_name, coordination="azure", on_name_conflict="overwrite"
    )
    status, stderr = _exit_of(settings, tmp_path)
    assert status == 1 and "APP_ON_NAME_CONFLICT=overwrite" in stderr and "keep-both" in stderr
    assert not _control_exists(azurite, container_name)


def test_a_credential_that_may_not_read_is_refused_with_replicas(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """A `cw` SAS reaches the data container but may not read: with replicas a file two
    members uploaded could not be told from another file, so start-up stops."""
    azurite.container(container_name).create_container()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        coordination="azure",
        azure_auth="sas",
        azure_connection_string=None,
        azure_sas_token=azurite.container_sas(container_name, "cw"),
        azure_create_container=False,
        azure_control_sas_token=azurite.container_sas(f"{container_name}-ctl", "racwdl"),
    )
    status, stderr = _exit_of(settings, tmp_path)
    assert status == 1, stderr
    assert "APP_COORDINATION=azure needs a data credential that may read" in stderr
    assert "sig=" not in stderr
    assert not _control_exists(azurite, container_name)


def test_a_container_sas_without_a_control_sas_is_refused_naming_the_setting(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        coordination="azure",
        azure_auth="sas",
        azure_connection_string=None,
        azure_sas_token=azurite.container_sas(container_name, "racwdl"),
        azure_create_container=False,
    )
    azurite.container(container_name).create_container()
    status, stderr = _exit_of(settings, tmp_path)
    assert status == 1, stderr
    assert "APP_AZURE_CONTROL_SAS_TOKEN" in stderr and "racwdl" in stderr
    assert not _control_exists(azurite, container_name)


def test_a_container_sas_with_its_control_sas_runs(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    control = f"{container_name}-ctl"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(control)
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        coordination="azure",
        azure_auth="sas",
        azure_connection_string=None,
        azure_sas_token=azurite.container_sas(container_name, "racwdl"),
        azure_control_sas_token=azurite.container_sas(control, "racwdl"),
        azure_create_container=False,
    )
    azurite.container(container_name).create_container()
    proc = ServiceProcess(settings, tmp_path / "service.log")
    proc.start()
    try:
        with proc.client as c:
            status = wait_for(lambda: c.get("/v1/status").json(), timeout=30)
        assert status["member_valid"] and status["control_container"] == control
        started = time.monotonic()
        assert proc.signal(15) == -15 and time.monotonic() - started < 30
    finally:
        if proc.proc is not None:
            proc.proc.kill()
            proc.proc.wait()
