"""The credential chain, error classification and secrecy, against a real Azurite."""

from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity.aio import ChainedTokenCredential
from pydantic import ValidationError

from nfs_watcher_uploader.config import AzureAuth, Settings
from nfs_watcher_uploader.errors import CannotStart, IntegrityError, PermanentError, RetryableError
from nfs_watcher_uploader.storage import (
    Storage,
    account_name_from_url,
    check_blob_name,
    classify,
    developer_identity,
    workload_or_managed_identity,
)

from .helpers import KEY, Azurite


class FailingCredential:
    """Stands in for DefaultAzureCredential on a machine with no identity."""

    def __init__(self) -> None:
        self.asked = 0
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.asked += 1
        raise ClientAuthenticationError("no managed identity endpoint")

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> "FailingCredential":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()


def _settings(azurite: Azurite, **kw: Any) -> Settings:
    base: dict[str, Any] = {"azure_account_url": azurite.url, "azure_container": "creds"}
    base.update(kw)
    return Settings(**base)


async def test_https_tries_identity_then_falls_back_to_connection_string(azurite: Azurite) -> None:
    fake = FailingCredential()
    settings = _settings(
        azurite,
        azure_account_url="https://devstoreaccount1.blob.core.windows.net",
        azure_connection_string=azurite.connection_string,
    )
    storage = Storage(settings, token_credential=lambda: fake)  # type: ignore[arg-type,return-value]
    await storage.connect()
    try:
        assert fake.asked == 1 and fake.closed
        assert storage.auth_used == "connection-string"
    finally:
        await storage.close()


async def test_http_url_never_uses_a_token_credential(azurite: Azurite) -> None:
    def forbidden() -> Any:
        raise AssertionError("token credential must not be built for http://")

    storage = Storage(_settings(azurite, azure_account_key=KEY), token_credential=forbidden)
    await storage.connect()
    try:
        assert storage.auth_used == "account-key"
    finally:
        await storage.close()


async def test_identity_only_mode_does_not_fall_back(azurite: Azurite) -> None:
    fake = FailingCredential()
    settings = _settings(
        azurite,
        azure_account_url="https://devstoreaccount1.blob.core.windows.net",
        azure_auth="identity",
        azure_connection_string=azurite.connection_string,
    )
    storage = Storage(settings, token_credential=lambda: fake)  # type: ignore[arg-type,return-value]
    with pytest.raises(RetryableError, match="identity"):
        await storage.connect()
    assert not storage.connected


async def test_a_wrong_key_stops_start_up_and_is_never_echoed(azurite: Azurite) -> None:
    """A fixed credential that storage refuses is refused the same way at every attempt."""
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    storage = Storage(_settings(azurite, azure_account_key=wrong))
    with pytest.raises(CannotStart, match="APP_AZURE_ACCOUNT_KEY") as info:
        await storage.connect()
    assert wrong not in str(info.value)


def test_identity_mode_needs_https() -> None:
    with pytest.raises(ValidationError, match="needs an https"):
        Settings(azure_account_url="http://x/y", azure_container="c", azure_auth=AzureAuth.IDENTITY)


def test_secrets_stay_out_of_repr_and_errors() -> None:
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


async def test_pod_identity_is_workload_then_managed_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Built, never asked for a token: construction reads the environment only."""
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    chain = workload_or_managed_identity()
    assert isinstance(chain, ChainedTokenCredential)
    assert [type(c).__name__ for c in chain.credentials] == ["ManagedIdentityCredential"]
    await chain.close()
    # What the workload identity webhook puts in the pod.
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
    chain = workload_or_managed_identity()
    assert isinstance(chain, ChainedTokenCredential)
    names = [type(c).__name__ for c in chain.credentials]
    assert names == ["WorkloadIdentityCredential", "ManagedIdentityCredential"]
    await chain.close()


async def test_auth_modes_choose_their_identity() -> None:
    url = "https://acct.blob.core.windows.net"
    for mode, factory in (
        (AzureAuth.AUTO, workload_or_managed_identity),
        (AzureAuth.IDENTITY, workload_or_managed_identity),
        (AzureAuth.IDENTITY_DEFAULT, developer_identity),
    ):
        storage = Storage(Settings(azure_account_url=url, azure_container="c", azure_auth=mode))
        assert storage._token_credential is factory, mode
        expected = AzureAuth.IDENTITY if mode is AzureAuth.AUTO else mode
        assert [c.label for c in storage._candidates()] == [expected]
        await storage.close()  # the HTTP session the candidates were given


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
def test_storage_settings_are_checked(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(
            {"azure_account_url": "http://x/y", "azure_container": "c", **values}
        )
    assert message in str(info.value) and "TOPSECRET" not in str(info.value)


def test_account_name_from_url() -> None:
    assert account_name_from_url("https://acct.blob.core.windows.net") == "acct"
    assert account_name_from_url("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"


def _http_error(status: int, code: Any = None) -> HttpResponseError:
    err = HttpResponseError(message=f"status {status}")
    err.status_code = status
    err.error_code = code  # type: ignore[attr-defined]
    return err


@pytest.mark.parametrize("status", [500, 503, 408, 429, 403, 404, 409])
def test_transient_http_errors_retry(status: int) -> None:
    assert isinstance(classify(_http_error(status)), RetryableError)


def test_error_codes_from_the_sdk_enum_are_recognised() -> None:
    from azure.storage.blob import StorageErrorCode

    assert isinstance(
        classify(_http_error(400, StorageErrorCode.INVALID_RESOURCE_NAME)), PermanentError
    )
    assert isinstance(classify(_http_error(400, StorageErrorCode.MD5_MISMATCH)), IntegrityError)


def test_permanent_http_errors_park() -> None:
    assert isinstance(classify(_http_error(400, "InvalidResourceName")), PermanentError)
    assert isinstance(classify(_http_error(413)), PermanentError)
    assert isinstance(classify(_http_error(400, "Md5Mismatch")), RetryableError)
    assert isinstance(classify(ExceptionGroup("g", [_http_error(413)])), PermanentError)
    assert isinstance(classify(ConnectionResetError()), RetryableError)


def test_blob_name_checks() -> None:
    check_blob_name("20260101/s/ok.bin")
    for bad in ("20260101/s/dot.", "20260101/s/" + "x" * 1100, "20260101/s/\udcff"):
        with pytest.raises(PermanentError):
            check_blob_name(bad)


def test_the_block_id_key_is_made_once_kept_private_and_a_damaged_one_set_aside(
    tmp_path: Path,
) -> None:
    from nfs_watcher_uploader.block_ids import load_block_key

    path = tmp_path / "p" / "block-id.key"
    key = load_block_key(path)
    assert len(key) == 32 and load_block_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"short")
    replaced = load_block_key(path)
    assert len(replaced) == 32 and replaced != key
    assert [p.name for p in path.parent.iterdir() if "unfit" in p.name] != []
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
