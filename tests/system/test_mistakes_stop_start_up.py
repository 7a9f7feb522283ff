"""A mistake that no waiting can fix stops start-up: the real process exits with status 1
within 30 s, with a line that names the variable and what to check, and creates nothing (no
folder on the share, no container). What may heal (storage unreachable) is retried as before."""

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import generate_container_sas

from nfs_watcher_uploader.blob.azure_errors import stop_line
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import PROBE_STALE_S
from nfs_watcher_uploader.errors import CannotStart
from nfs_watcher_uploader.nfs.probe import probe_name
from nfs_watcher_uploader.settings_checks import blob_endpoint, container_name_problem
from tests.support.helpers import (
    ACCOUNT,
    KEY,
    ROOT,
    Azurite,
    ServiceProcess,
    free_port,
    make_settings,
    service_env,
    wait_for,
)
from tests.support.mounts import bind_mount
from tests.support.relay import FIREWALL_MESSAGE, Relay, azure_firewall, proxy_denied, through

# The promise: the exit status and the line, within this.
STOPS_WITHIN_S = 30.0


@dataclass
class Stopped:
    status: int
    stderr: str
    seconds: float


def _start(
    settings: Settings, prefix: list[str] | None = None, **env: str
) -> subprocess.Popen[str]:
    full = service_env(settings) | {"APP_PORT": str(free_port()), "APP_HOST": "127.0.0.1"} | env
    return subprocess.Popen(
        [*(prefix or []), str(ROOT / ".venv" / "bin" / "nfs-watcher-uploader")],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stopped(
    settings: Settings, tmp_path: Path, prefix: list[str] | None = None, **env: str
) -> Stopped:
    """Run the service; return how it ended. Asserts nothing on the share changed."""
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    started = time.monotonic()
    proc = _start(settings, prefix, **env)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipe
    seconds = time.monotonic() - started
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "start-up created something"
    return Stopped(proc.returncode, stderr, seconds)


def _assert_stops(result: Stopped, *words: str) -> None:
    assert result.status == 1, result.stderr
    assert result.seconds < STOPS_WITHIN_S, result.seconds
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    for word in words:
        assert word in result.stderr, f"{word!r} not in {result.stderr!r}"
    assert last.startswith("nfs-watcher-uploader:") or last.startswith("  "), last


@pytest.mark.parametrize(
    ("container", "rule"),
    [
        ("o", "is 1 characters long"),
        ("My_Container", "may hold only lowercase letters"),
        ("-ingest", "must start and end with a letter or a digit"),
        ("in--gest", "two hyphens in a row"),
        ("x" * 64, "is 64 characters long"),
    ],
)
def test_a_container_name_azure_refuses_stops_start_up_naming_the_rule(
    tmp_path: Path, azurite: Azurite, container: str, rule: str
) -> None:
    settings = make_settings(tmp_path, azurite, container)
    result = _stopped(settings, tmp_path)
    _assert_stops(result, "APP_AZURE_CONTAINER", rule, "3 to 63")


def test_container_names_that_follow_azures_rules_pass() -> None:
    for name in ("abc", "ingest", "a-b-c", "x" * 63, "0recordings9", "$root"):
        assert container_name_problem(name) is None, name


def test_an_account_url_other_than_the_connection_strings_endpoint_stops_start_up(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_account_url=azurite.url.replace("devstoreaccount1", "devstoreaccount9"),
    )
    result = _stopped(settings, tmp_path)
    _assert_stops(result, "APP_AZURE_ACCOUNT_URL", "APP_AZURE_CONNECTION_STRING", azurite.url)
    assert "AccountKey" not in result.stderr  # the secret part of the string never shows
    assert not azurite.container(container_name).exists()


@pytest.mark.adversarial
def test_a_connection_string_pointing_elsewhere_than_the_account_url_never_starts(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """Found as a proxy chosen for the wrong host: with connection-string auth the requests went
    to the connection string's BlobEndpoint, another host than APP_AZURE_ACCOUNT_URL, whose
    proxy and NO_PROXY were the ones applied. Two endpoints for one account are now refused at
    start (settings_checks), naming both variables, before any request is sent.

    Finding attack3-3 (attack review of the block id key).
    """
    relay = Relay(azurite.port, allow=frozenset({"127.0.0.3"})).start()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_auth="connection-string",
        azure_account_url=relay.url.replace("127.0.0.1", "localhost"),
        azure_connection_string=azurite.connection_string.replace(azurite.url, relay.url),
    )
    service = ServiceProcess(settings, tmp_path / "service.log")
    try:
        service.start(wait_ready=False)
        assert service.proc is not None
        assert service.proc.wait(30) == 1
        log = service.log.read_text()
        assert "APP_AZURE_ACCOUNT_URL" in log and "APP_AZURE_CONNECTION_STRING" in log, log
        assert relay.refused == 0
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.signal(signal.SIGTERM)
        relay.stop()


def test_a_connection_strings_endpoint_is_read_from_its_fields() -> None:
    base = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=k==;EndpointSuffix=x.net"
    assert blob_endpoint(base) == "https://acct.blob.x.net"
    assert blob_endpoint("BlobEndpoint=http://h:1/a/;AccountKey=k") == "http://h:1/a/"
    assert str(blob_endpoint("UseDevelopmentStorage=true")).endswith(":10000/devstoreaccount1")


def test_two_credentials_where_one_is_asked_for_stop_start_up_naming_both(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_auth="sas",
        azure_sas_token=azurite.container_sas(container_name, "rcw"),
    )
    result = _stopped(settings, tmp_path)
    _assert_stops(
        result, "APP_AZURE_AUTH=sas", "APP_AZURE_SAS_TOKEN", "APP_AZURE_CONNECTION_STRING"
    )
    assert "sig=" not in result.stderr


def test_a_missing_incoming_folder_stops_start_up_and_is_never_created(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(tmp_path, azurite, container_name)
    settings.nfs_incoming_dir.rmdir()  # a typo, or a share that is not mounted
    result = _stopped(settings, tmp_path)
    _assert_stops(result, "APP_NFS_INCOMING_DIR", str(settings.nfs_incoming_dir), "mounted")
    assert not settings.nfs_incoming_dir.exists()
    assert not settings.nfs_processing_root.exists()


def test_an_incoming_path_that_is_a_file_stops_start_up(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    settings = make_settings(tmp_path, azurite, container_name)
    settings.nfs_incoming_dir.rmdir()
    settings.nfs_incoming_dir.write_bytes(b"not a folder")
    _assert_stops(_stopped(settings, tmp_path), "APP_NFS_INCOMING_DIR", "is not a folder")


def test_a_mistyped_account_name_stops_start_up_naming_it(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """Azurite answers 404 ResourceNotFound for an account it does not have (Azure itself: a
    host name DNS does not know, see the unit test below)."""
    typo = azurite.url.replace("devstoreaccount1", "devstoreacount1")
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_account_url=typo,
        azure_connection_string=azurite.connection_string.replace(azurite.url, typo),
    )
    result = _stopped(settings, tmp_path)
    _assert_stops(result, "404 ResourceNotFound", typo, "account name")
    assert not azurite.container(container_name).exists()


def test_a_refused_fixed_credential_stops_start_up(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    settings = make_settings(
        tmp_path, azurite, container_name, azure_connection_string=None, azure_account_key=wrong
    )
    result = _stopped(settings, tmp_path)
    _assert_stops(result, "403", "APP_AZURE_ACCOUNT_KEY")
    assert wrong not in result.stderr


async def test_storage_refusing_the_container_name_stops_start_up(azurite: Azurite) -> None:
    """Storage's own 400 for a name (should the rules checked at start ever differ)."""
    settings = Settings.model_validate(
        {
            "azure_account_url": azurite.url,
            "azure_container": "o",
            "azure_connection_string": azurite.connection_string,
        }
    )
    with pytest.raises(CannotStart, match="APP_AZURE_CONTAINER"):
        await Storage(settings).connect()


def test_a_host_name_dns_does_not_know_stops_start_up() -> None:
    settings = Settings(
        azure_account_url="https://acount.blob.core.windows.net", azure_container="c"
    )
    error = ServiceRequestError("Cannot connect to host")
    error.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    line = stop_line(error, settings)
    assert line is not None and "acount.blob.core.windows.net" in line
    error.__cause__ = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert stop_line(error, settings) is None  # no DNS server yet: retried


def test_storage_that_cannot_be_reached_is_retried_not_fatal(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_account_url=closed,
        azure_connection_string=azurite.connection_string.replace(azurite.url, closed),
    )
    port = free_port()
    proc = _start(settings, APP_PORT=str(port))
    try:

        def waiting() -> str | None:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                detail = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["detail"]
            except httpx.HTTPError:
                return None
            return detail if "trying again" in detail or "waiting to" in detail else None

        detail = wait_for(waiting, timeout=60, what="a failed attempt to connect")
        assert detail is not None and "connect to storage" in detail
        assert proc.poll() is None  # still trying
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _waiting_detail(service: ServiceProcess) -> str:
    """What /readyz says the process waits for ("" while it does not answer); asserts that the
    process still runs."""
    assert service.proc is not None
    assert service.proc.poll() is None, service.log.read_text()[-3000:]
    try:
        with service.client as api:
            return str(api.get("/readyz").json()["detail"] or "")
    except httpx.HTTPError:
        return ""


@pytest.mark.adversarial
def test_a_sas_that_is_not_valid_yet_is_waited_for_not_fatal(
    tmp_path: Path, azurite: Azurite
) -> None:
    """A SAS whose start time is still ahead (generated for later, or on a clock a little
    ahead of storage's) becomes valid by waiting: start-up waits for it and then runs, as for
    any outage. It used to be judged "refused for good": exit 1, and a line sending the operator
    to check a SAS that was fine.

    Review of issues 19/20, finding 1.
    """
    container = f"later{uuid.uuid4().hex[:16]}"
    azurite.container(container).create_container()
    now = datetime.now(UTC)
    valid_from = now + timedelta(seconds=10)
    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission="cw",
        start=valid_from,
        expiry=now + timedelta(hours=1),
    )
    settings = make_settings(
        tmp_path,
        azurite,
        container,
        azure_auth="sas",
        azure_connection_string=None,
        azure_sas_token=sas,
        azure_create_container=False,
    )
    service = ServiceProcess(settings, tmp_path / "service.log")
    try:
        service.start(wait_ready=False)
        wait_for(service.ready, timeout=60, what="ready once the SAS is valid")
        # Azurite enforces the start time: ready only from then on.
        assert datetime.now(UTC) >= valid_from.replace(microsecond=0)
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.signal(signal.SIGTERM)


@pytest.mark.adversarial
def test_a_storage_firewall_that_lets_the_device_in_later_is_waited_for_not_fatal(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """The account's network rules refuse the device (403 AuthorizationFailure, "This request
    is not authorized to perform this operation."): an administrator adding the rule heals it
    with no change on the device, so start-up waits, saying why, and runs once the rule is
    there. It used to exit 1 as if the account key were wrong.

    Review of issues 19/20, finding 2.
    """
    relay = Relay(azurite.port, refuse=azure_firewall).start()
    settings = through(relay, azurite, tmp_path, container_name)
    service = ServiceProcess(settings, tmp_path / "service.log")
    try:
        service.start(wait_ready=False)
        detail = wait_for(
            lambda: d if FIREWALL_MESSAGE in (d := _waiting_detail(service)) else None,
            timeout=30,
            what="start-up waiting on the firewall",
        )
        assert detail is not None and "connect to storage" in detail
        relay.refuse = None  # the administrator adds the rule
        wait_for(service.ready, timeout=60, what="ready once the firewall lets it in")
        assert relay.refused_requests >= 1
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.signal(signal.SIGTERM)
        relay.stop()


@pytest.mark.adversarial
@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_proxy_that_denies_storage_for_now_is_waited_for_not_fatal(
    tmp_path: Path, azurite: Azurite, container_name: str, status: int
) -> None:
    """An answer that does not come from storage (a proxy's own 403 for a destination its
    rules deny, a 400 or 404 of its own; none carries storage's x-ms-request-id) says nothing
    about the credential, the container or the account: the proxy's rules may change at any
    time. Start-up waits, saying why, and runs once the proxy lets it through. It used to stop
    with exit 1, naming a credential, the container or the account that were fine.

    Review of issues 19/20, finding 12.
    """
    relay = Relay(azurite.port, refuse=proxy_denied(status)).start()
    settings = through(relay, azurite, tmp_path, container_name)
    service = ServiceProcess(settings, tmp_path / "service.log")
    try:
        service.start(wait_ready=False)
        wait_for(
            lambda: _waiting_detail(service) and relay.refused_requests >= 2,
            timeout=30,
            what="start-up waiting on the proxy",
        )
        relay.refuse = None  # the proxy's rule is added
        wait_for(service.ready, timeout=60, what="ready once the proxy lets it through")
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.signal(signal.SIGTERM)
        relay.stop()


def _assert_a_read_only_share_stops(
    tmp_path: Path, azurite: Azurite, container: str, left: tuple[str, ...] = ()
) -> None:
    """The share (with the files named in `left` in its incoming folder) mounted read-only
    stops start-up, naming the mount."""
    share = tmp_path / "share"
    (share / "incoming").mkdir(parents=True)
    (share / ".processing").mkdir()
    old = time.time() - PROBE_STALE_S - 60
    for name in left:
        (share / "incoming" / name).write_bytes(b"")
        os.utime(share / "incoming" / name, (old, old))
    ro = tmp_path / "ro"
    ro.mkdir()
    with bind_mount(share, ro, read_only=True):
        settings = make_settings(
            tmp_path,
            azurite,
            container,
            nfs_incoming_dir=ro / "incoming",
            nfs_processing_root=ro / ".processing",
        )
        _assert_stops(_stopped(settings, tmp_path), "read-only", "APP_NFS_INCOMING_DIR")
    assert all((share / "incoming" / name).exists() for name in left)


def test_a_read_only_share_stops_start_up(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    _assert_a_read_only_share_stops(tmp_path, azurite, container_name)


@pytest.mark.adversarial
def test_a_read_only_share_stops_start_up_though_a_crashed_run_left_a_probe_file(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """A probe file that a run killed mid-probe left (old enough to be removed) cannot be
    removed from a read-only share: that must not turn the read-only mount, which no waiting
    fixes, into an NFS error retried for ever. Start-up stops, naming the mount.

    Review of issues 19/20, finding 3.
    """
    _assert_a_read_only_share_stops(tmp_path, azurite, container_name, (probe_name(),))


def test_a_share_the_user_may_not_write_stops_start_up(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    """The incoming folder is 0555, and the service runs without the capability that lets
    root write anywhere (as a non-root user would)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    settings = make_settings(tmp_path, azurite, container_name)
    settings.nfs_incoming_dir.chmod(0o555)
    try:
        result = _stopped(
            settings, tmp_path, prefix=[setpriv, "--bounding-set=-dac_override,-dac_read_search"]
        )
    finally:
        settings.nfs_incoming_dir.chmod(0o755)
    _assert_stops(result, "may not create a file in APP_NFS_INCOMING_DIR", "APP_UID")
