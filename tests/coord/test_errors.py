"""Control errors say what to do (retry, or stop and fix a setting) and never carry a secret."""

import logging
import traceback
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import HttpResponseError

from nfs_watcher_uploader.coord.client import control_client, ensure_container
from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.errors import (
    ControlRefused,
    ControlUnavailable,
    CoordError,
    classify,
    redact,
)
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.roster import Roster
from tests.support.helpers import ACCOUNT, Azurite, free_port

from .conftest import Control

SIG = "s3cr3tS1gnature%2Bvalue%3D"
SAS = f"sv=2025-11-05&sr=c&sp=rwdl&se=2099-01-01T00%3A00%3A00Z&sig={SIG}"
SAS_URL = f"https://acct.blob.core.windows.net/c-ctl?comp=list&{SAS}"


def test_redact_removes_signatures_keys_and_tokens() -> None:
    text = (
        f"GET http://h/c/b?comp=lease&{SAS} "
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc+/=;EndpointSuffix=x "
        "SharedAccessSignature=sv=1&sig=zzz; Authorization: Bearer eyJ0eXAi.x-y_z "
        "SharedKey devstoreaccount1:c2lnbmF0dXJl"
    )
    clean = redact(text)
    for secret in (SIG, "abc+/=", "zzz", "eyJ0eXAi", "c2lnbmF0dXJl"):
        assert secret not in clean
    assert "comp=lease" in clean and "AccountName=a" in clean


def test_an_unreachable_storage_is_an_outage_and_no_sas_reaches_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    client = control_client(
        "site-ctl", account_url=closed, credential=AzureSasCredential(SAS), connect_timeout=0.5
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ControlUnavailable) as raised:
        Roster(client).read()
    with pytest.raises(ControlUnavailable) as raised_too:
        ensure_container(client)
    member = Member(client)
    with pytest.raises(ControlUnavailable) as raised_join:
        member.join()
    for error in (raised.value, raised_too.value, raised_join.value):
        shown = "".join(traceback.format_exception(error))
        assert SIG not in shown and SIG not in repr(error)
        assert error.__cause__ is None and error.__suppress_context__
    assert SIG not in caplog.text


def test_a_credential_without_the_permission_is_refused_not_retried(
    azurite: Azurite,
) -> None:
    name = "perm-check-ctl"
    admin = control_client(name, connection_string=azurite.connection_string)
    ensure_container(admin)
    read_only = azurite.container_sas(name, "r")
    client = control_client(name, account_url=azurite.url, credential=AzureSasCredential(read_only))
    with pytest.raises(ControlRefused, match="AuthorizationPermissionMismatch") as raised:
        Member(client).join()
    assert read_only.split("sig=")[1] not in str(raised.value)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "ServerBusy", ControlUnavailable),
        (500, "InternalError", ControlUnavailable),
        (408, None, ControlUnavailable),
        (429, None, ControlUnavailable),
        (403, "AuthenticationFailed", ControlUnavailable),  # a key being rotated
        (403, "AuthorizationPermissionMismatch", ControlRefused),
        (400, "InvalidResourceName", ControlRefused),
    ],
)
def test_storage_answers_are_classified_like_the_upload_path(
    status: int, code: str | None, kind: type[CoordError]
) -> None:
    exc = HttpResponseError(message=f"nope {SAS}")
    exc.status_code = status
    setattr(exc, "error_code", code)  # noqa: B010 (set by the SDK from the answer)
    error = classify(exc, "doing it")
    assert type(error) is kind and SIG not in str(error)


@pytest.mark.adversarial
def test_a_control_error_that_is_a_bug_shows_no_secret_in_the_status(
    control: Control, join: Callable[..., Member]
) -> None:
    """Review of issue 24, finding 7. An unexpected exception in the coordinator's loop (a bug,
    or an exception a library raises outside the storage errors) was kept as `repr(exc)`,
    unredacted, and /v1/status shows it as `coordination_error`: a SAS in a URL of its text
    reached the answer. Control errors also kept a URL's user and password."""
    coordinator = Coordinator(join(start=False), control.client)

    def read() -> None:
        coordinator._stop.set()  # pyright: ignore[reportPrivateUsage]
        raise RuntimeError(f"GET {SAS_URL} failed")

    coordinator._roster = SimpleNamespace(read=read)  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage]
    coordinator.run()
    assert coordinator.last_error is not None and "RuntimeError" in coordinator.last_error
    assert SIG not in coordinator.last_error
    assert "p4ss" not in str(ControlUnavailable("listing: https://me:p4ss@acct.example/c-ctl"))
