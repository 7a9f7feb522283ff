"""The credential chain tries what a pod may have, in order, hands over on a refusal, and never
runs a developer identity or echoes a secret."""

from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ChainedTokenCredential

from nfs_watcher_uploader.blob.credentials import (
    account_name_from_url,
    candidates,
    developer_identity,
    workload_or_managed_identity,
)
from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import AzureAuth, Settings
from nfs_watcher_uploader.errors import CannotStart, RetryableError
from tests.support.helpers import KEY, Azurite


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


async def test_https_tries_identity_then_falls_back_to_the_connection_string(
    azurite: Azurite,
) -> None:
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


async def test_an_http_url_never_uses_a_token_credential(azurite: Azurite) -> None:
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
    assert storage.auth_used is None  # nothing connected


async def test_a_wrong_key_stops_start_up_and_is_never_echoed(azurite: Azurite) -> None:
    """A fixed credential that storage refuses is refused the same way at every attempt."""
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    storage = Storage(_settings(azurite, azure_account_key=wrong))
    with pytest.raises(CannotStart, match="APP_AZURE_ACCOUNT_KEY") as info:
        await storage.connect()
    assert wrong not in str(info.value)


async def test_a_pods_identity_is_workload_then_managed_identity(
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


async def test_each_auth_mode_chooses_its_identity() -> None:
    url = "https://acct.blob.core.windows.net"
    for mode, factory in (
        (AzureAuth.AUTO, workload_or_managed_identity),
        (AzureAuth.IDENTITY, workload_or_managed_identity),
        (AzureAuth.IDENTITY_DEFAULT, developer_identity),
    ):
        storage = Storage(Settings(azure_account_url=url, azure_container="c", azure_auth=mode))
        assert storage._token_credential is factory, mode
        expected = AzureAuth.IDENTITY if mode is AzureAuth.AUTO else mode
        chain = candidates(storage._settings, storage._token_credential, {})
        assert [c.label for c in chain] == [expected]


def test_the_account_name_is_read_from_either_kind_of_url() -> None:
    assert account_name_from_url("https://acct.blob.core.windows.net") == "acct"
    assert account_name_from_url("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"
