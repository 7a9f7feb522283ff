"""Settings that cannot work stop start-up with a line naming the variable (or the rule), touch
nothing, and never echo a secret."""

import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.cloud.webhooks import Webhooks
from nfs_watcher_uploader.config import (
    AccessTier,
    AzureAuth,
    Settings,
    parse_tags,
    unsafe_paths,
)
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.session import today_utc
from nfs_watcher_uploader.settings_checks import load_settings
from tests.support.helpers import (
    ROOT,
    Azurite,
    free_port,
    make_settings,
    service_env,
    write_file,
)

TOKEN = "t0k3n-for-the-tests-" + "a" * 24


def _settings(**values: Any) -> Settings:
    return Settings.model_validate(
        {"azure_account_url": "http://x/y", "azure_container": "c"} | values
    )


@pytest.mark.adversarial
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"local_staging_root": ".processing"}, "are the same folder"),
        ({"nfs_processing_root": "incoming/.processing"}, "is inside APP_NFS_INCOMING_DIR"),
        ({"local_staging_root": "incoming/staging"}, "is inside APP_NFS_INCOMING_DIR"),
        ({"nfs_processing_root": "/dev/shm/nwu-processing"}, "another filesystem"),
    ],
)
def test_unsafe_roots_are_refused_at_start_touching_nothing(
    tmp_path: Path, azurite: Azurite, overrides: dict[str, str], message: str
) -> None:
    """Finding adversary-12 (first adversarial review, issue 10)."""
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


@pytest.mark.adversarial
def test_a_bind_mount_aliasing_staging_and_processing_is_refused_at_start(
    service_factory: Any, settings_factory: Any, tmp_path: Path
) -> None:
    """The unsafe-roots check compares real paths only. Two mount points of one folder (a k8s
    volume mounted twice, with subPath, or a bind mount) have different real paths: staging
    "is not" processing, the check passes, and start-up's `clear_staging` removes
    `.processing/<date>/`: every claimed file not yet uploaded, lost.

    Should: refused at start (compare (st_dev, st_ino) of each root and of its parents), the
    claimed file kept and uploaded.

    Finding adversary-review-M (second adversarial review, issue 10).
    """
    proc, stage = tmp_path / ".processing", tmp_path / "staging"
    claimed = write_file(proc / today_utc() / "s" / "claimed.bin", b"the only copy")
    stage.mkdir()
    if subprocess.run(["mount", "--bind", str(proc), str(stage)]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        settings = settings_factory(local_staging_root=stage)
        problems = unsafe_paths(settings)
        if not problems:
            service_factory(settings)
        assert claimed.exists(), "the claimed file was deleted at start"
        assert problems, "staging and processing are one folder, yet start-up was allowed"
    finally:
        subprocess.run(["umount", "-l", str(stage)], check=False)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_token": "s3cr3t"}, "the API token has 6 characters; use at least 16"),
        ({"api_token": " " * 20}, "the API token has 0 characters"),
        ({"api_token": TOKEN, "api_token_file": "/x"}, "not both"),
        ({"metrics_require_token": True}, "APP_METRICS_REQUIRE_TOKEN=true needs APP_API_TOKEN"),
    ],
)
def test_a_weak_or_doubly_set_api_token_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(
            {"azure_account_url": "http://x/y", "azure_container": "c", **values}
        )
    assert message in str(info.value)
    assert "s3cr3t" not in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_BANDWIDTH_LIMIT": "12Q"}, "APP_BANDWIDTH_LIMIT: Value error, '12Q' is not a rate"),
        ({"APP_BANDWIDTH_SCHEDULE": "08:00,2M 9am,1M"}, "APP_BANDWIDTH_SCHEDULE: Value error"),
        ({"APP_TIMEZONE": "Mars/Olympus"}, "APP_TIMEZONE: Value error, unknown time zone"),
        ({"APP_UPLOAD_ORDER": "random"}, "APP_UPLOAD_ORDER"),
        (
            {"APP_BANDWIDTH_LIMIT": "1M", "APP_BANDWIDTH_SCHEDULE": "08:00,2M"},
            "set APP_BANDWIDTH_LIMIT or APP_BANDWIDTH_SCHEDULE, not both",
        ),
    ],
)
def test_bad_bandwidth_settings_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("APP_AZURE_ACCOUNT_URL", "http://127.0.0.1:1/devstoreaccount1")
    monkeypatch.setenv("APP_AZURE_CONTAINER", "c")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert message in str(info.value)


def test_bad_tags_tier_or_source_id_are_refused_naming_the_rule() -> None:
    assert parse_tags("") is None and parse_tags(" , ") is None
    assert parse_tags("session") == {}  # the session tag alone
    assert parse_tags("project=p-14, site=lab 2:north ,x=") == {
        "project": "p-14",
        "site": "lab 2:north",
        "x": "",
    }
    for text, message in (
        ("session=x", "set by the service"),
        ("novalue", "is not key=value"),
        ("=v", "is not key=value"),
        ("k=v!", "only letters, digits"),
        ("k=" + "v" * 257, "values 256"),
        (",".join(f"k{i}=v" for i in range(10)), "at most 9 tags"),
    ):
        with pytest.raises(ValidationError, match=message):
            _settings(azure_tags=text)
    assert _settings(azure_access_tier="archive").azure_access_tier is AccessTier.ARCHIVE
    assert _settings(azure_access_tier="").azure_access_tier is None
    with pytest.raises(ValidationError, match="azure_access_tier"):
        _settings(azure_access_tier="Glacier")
    with pytest.raises(ValidationError, match="printable ASCII"):
        _settings(source_id="jetson\n07")
    assert _settings().source_id == socket.gethostname()


def test_the_webhook_url_and_secret_stay_out_of_repr_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "https://hooks.example.invalid/h?token=TOPSECRET"
    s = _settings(webhook_url=url, webhook_secret="TOPSECRET2")
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s.model_dump())
    layout = Layout.from_settings(s)
    hooks = Webhooks(s, layout, Nfs(1.0))
    assert "TOPSECRET" not in repr(hooks)
    assert "to=https://hooks.example.invalid " in repr(hooks)
    monkeypatch.setenv("APP_AZURE_ACCOUNT_URL", "http://x/y")
    monkeypatch.setenv("APP_AZURE_CONTAINER", "c")
    monkeypatch.setenv("APP_WEBHOOK_URL", "ftp://user:TOPSECRET@host/")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert "APP_WEBHOOK_URL: Value error, must be an http:// or https:// URL" in str(info.value)
    assert "TOPSECRET" not in str(info.value)


def test_identity_mode_needs_https() -> None:
    with pytest.raises(ValidationError, match="needs an https"):
        Settings(azure_account_url="http://x/y", azure_container="c", azure_auth=AzureAuth.IDENTITY)


def test_storage_secrets_stay_out_of_repr_and_errors() -> None:
    secret = "AccountKey=TOPSECRET"
    s = Settings.model_validate(
        {
            "azure_account_url": "http://x/y",
            "azure_container": "c",
            "azure_connection_string": secret,
            "azure_account_key": "TOPSECRET2",
            "azure_sas_token": "sv=2025&sig=TOPSECRET3",
            "api_token": "TOPSECRET4-api-token",
        }
    )
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s.model_dump())
    assert "TOPSECRET" not in repr(Storage(s))
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(
            {
                "azure_account_url": "http://x/y",
                "azure_container": "c",
                "azure_auth": "account-key",
                "azure_connection_string": secret,
            }
        )
    assert "TOPSECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"azure_auth": "sas"}, "APP_AZURE_AUTH=sas needs APP_AZURE_SAS_TOKEN"),
        ({"azure_auth": "identity-default"}, "needs an https://"),
        (
            {"azure_account_url": "https://a.blob.core.windows.net/?sv=1&sig=TOPSECRET"},
            "must not carry a query string",
        ),
    ],
)
def test_storage_settings_that_cannot_work_are_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(
            {"azure_account_url": "http://x/y", "azure_container": "c", **values}
        )
    assert message in str(info.value) and "TOPSECRET" not in str(info.value)


def test_a_processing_root_another_replica_creates_meanwhile_is_never_taken_for_a_parent(
    tmp_path: Path,
) -> None:
    """Replicas starting together on a fresh share: one creates the processing root while
    another checks the roots. The root that appears must not be taken, with the identity of
    its parent (the share), for a folder that holds incoming."""
    share = tmp_path / "share"
    (share / "incoming").mkdir(parents=True)
    settings = Settings(
        azure_account_url="http://127.0.0.1:1/devstoreaccount1",
        azure_container="c",
        nfs_incoming_dir=share / "incoming",
        nfs_processing_root=share / ".processing",
        local_staging_root=tmp_path / "staging",
    )
    stop = threading.Event()

    def other_replica() -> None:
        while not stop.is_set():
            (share / ".processing").mkdir(exist_ok=True)
            (share / ".processing").rmdir()

    thread = threading.Thread(target=other_replica)
    thread.start()
    try:
        found = [p for _ in range(3000) for p in unsafe_paths(settings)]
    finally:
        stop.set()
        thread.join()
    assert found == []
