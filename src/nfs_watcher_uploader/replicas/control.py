"""The control container's client, made from the credential that reached the data container,
and what start-up refuses with APP_COORDINATION=azure because no waiting can fix it.

    connection string, account key   reach both containers
    SAS                              an account SAS (`srt=`) reaches both; a container SAS
                                     (`sr=c`) reaches the data container only, so the control
                                     container needs APP_AZURE_CONTROL_SAS_TOKEN (permissions
                                     racwdl on it), else start-up stops naming it
    identity                         the same identity, through azure-identity's synchronous
                                     credentials (control requests run in threads of their own)

A data credential that may not read is refused (`refuse_blind`): without reads a file that two
members uploaded (a paused one and the one that took its files over) cannot be recognised as
the same bytes, and a rewrite cannot be made conditional on the blob's ETag.
"""

from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from azure.core.credentials import AzureSasCredential
from azure.storage.blob import ContainerClient

from nfs_watcher_uploader.blob.credentials import (
    account_name_from_url,
    sync_workload_or_managed_identity,
)
from nfs_watcher_uploader.config import AzureAuth, Settings
from nfs_watcher_uploader.coord.client import control_client
from nfs_watcher_uploader.errors import CannotStart

MakeClient = Callable[[], ContainerClient]


def make_control_client(settings: Settings, container: str, auth_used: str | None) -> MakeClient:
    """A maker of control clients (each with its own HTTP session) with the credential that
    reached the data container (`Storage.auth_used`). Raises CannotStart when it cannot
    reach the control container and no setting gives one that can."""
    url = settings.azure_account_url
    if auth_used == "connection-string" and settings.azure_connection_string is not None:
        secret = settings.azure_connection_string.get_secret_value()
        return partial(control_client, container, connection_string=secret)
    if auth_used == "account-key" and settings.azure_account_key is not None:
        name = settings.azure_account_name or account_name_from_url(url)
        key = {"account_name": name, "account_key": settings.azure_account_key.get_secret_value()}
        return partial(control_client, container, account_url=url, credential=key)
    if auth_used == "sas":
        return partial(control_client, container, account_url=url, credential=_sas(settings))
    if auth_used in (AzureAuth.IDENTITY, AzureAuth.IDENTITY_DEFAULT):
        credential = _identity(auth_used == AzureAuth.IDENTITY_DEFAULT)
        return partial(control_client, container, account_url=url, credential=credential)
    raise CannotStart(f"no credential for the control container (data credential: {auth_used})")


def _sas(settings: Settings) -> AzureSasCredential:
    if settings.azure_control_sas_token is not None:
        token = settings.azure_control_sas_token.get_secret_value()
        return AzureSasCredential(token.strip().lstrip("?"))
    assert settings.azure_sas_token is not None
    token = settings.azure_sas_token.get_secret_value().strip().lstrip("?")
    fields = parse_qs(token)
    if "srt" in fields and "sr" not in fields:  # an account SAS: every container
        return AzureSasCredential(token)
    raise CannotStart(
        "APP_AZURE_SAS_TOKEN reaches one container only (a container SAS, sr=c), and "
        "APP_COORDINATION=azure also needs the control container: set "
        "APP_AZURE_CONTROL_SAS_TOKEN to a SAS for it with permissions racwdl (read, add, "
        "create, write, delete, list), or use an account SAS"
    )


def _identity(developer: bool) -> Any:
    """The synchronous twin of the identity the data client uses (blob/credentials)."""
    if developer:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    return sync_workload_or_managed_identity()


def refuse_blind(can_read: bool) -> None:
    """Stop start-up when the data credential may not read (see the module docstring)."""
    if not can_read:
        raise CannotStart(
            "APP_COORDINATION=azure needs a data credential that may read blobs: without reads "
            "a file uploaded by two members (a paused one and the one that took its files over) "
            "cannot be recognised as the same bytes and would go up twice as name~2, and a "
            "rewrite could not be made conditional on the blob's ETag. Grant read (a SAS with "
            "r; Storage Blob Data Contributor), or use APP_COORDINATION=none"
        )
