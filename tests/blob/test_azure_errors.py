"""Azure's answers map to what the caller does: retry later, or park the file."""

from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from nfs_watcher_uploader.blob.azure_errors import check_blob_name, classify, refused_for_good
from nfs_watcher_uploader.blob.credentials import sas_valid_from
from nfs_watcher_uploader.constants import CLOCK_SKEW_S
from nfs_watcher_uploader.errors import IntegrityError, PermanentError, RetryableError


def _http_error(status: int, code: Any = None) -> HttpResponseError:
    err = HttpResponseError(message=f"status {status}")
    err.status_code = status
    err.error_code = code  # type: ignore[attr-defined]
    return err


@pytest.mark.parametrize("status", [500, 503, 408, 429, 403, 404, 409])
def test_transient_http_errors_are_retried(status: int) -> None:
    assert isinstance(classify(_http_error(status)), RetryableError)


def test_error_codes_from_the_sdk_enum_are_recognised() -> None:
    from azure.storage.blob import StorageErrorCode

    assert isinstance(
        classify(_http_error(400, StorageErrorCode.INVALID_RESOURCE_NAME)), PermanentError
    )
    assert isinstance(classify(_http_error(400, StorageErrorCode.MD5_MISMATCH)), IntegrityError)


def test_permanent_http_errors_park_the_file() -> None:
    assert isinstance(classify(_http_error(400, "InvalidResourceName")), PermanentError)
    assert isinstance(classify(_http_error(413)), PermanentError)
    assert isinstance(classify(_http_error(400, "Md5Mismatch")), RetryableError)
    assert isinstance(classify(ExceptionGroup("g", [_http_error(413)])), PermanentError)
    assert isinstance(classify(ConnectionResetError()), RetryableError)


def test_a_blob_name_azure_refuses_is_a_permanent_error() -> None:
    check_blob_name("20260101/s/ok.bin")
    for bad in ("20260101/s/dot.", "20260101/s/" + "x" * 1100, "20260101/s/\udcff"):
        with pytest.raises(PermanentError):
            check_blob_name(bad)


def _refusal(code: str | None, message: str, storage: bool = True) -> HttpResponseError:
    """A 403 as storage gives it (with its request id), or as a proxy does."""
    err = HttpResponseError(message=message)
    err.status_code = 403
    err.error_code = code  # type: ignore[attr-defined]
    headers = {"x-ms-request-id": "5b0f-1"} if storage else {"Content-Type": "text/html"}
    err.response = SimpleNamespace(headers=headers)  # type: ignore[assignment]
    return err


def test_only_a_credential_storage_cannot_authenticate_is_refused_for_good() -> None:
    """What an administrator changes on the account, or a clock, may let the device in later;
    a wrong signature, an expired SAS or a missing permission never will."""
    now = 2_000_000_000.0
    wrong = _refusal("AuthenticationFailed", "Server failed to authenticate the request.")
    azurite = _refusal("AuthorizationFailure", "Server failed to authenticate the request.")
    firewall = _refusal("AuthorizationFailure", "This request is not authorized to perform...")
    permission = _refusal("AuthorizationPermissionMismatch", "not authorized ... permission.")
    for label in ("sas", "connection-string", "account-key"):
        assert refused_for_good(wrong, label, None, now)
        assert refused_for_good(azurite, label, None, now)
        assert refused_for_good(permission, label, None, now)
        assert not refused_for_good(firewall, label, None, now)
        assert not refused_for_good(_refusal("KeyBasedAuthenticationNotPermitted", ""), label)
    assert not refused_for_good(wrong, "identity", None, now)  # its role may come later
    proxy = _refusal(None, "Access denied by the proxy.", storage=False)
    assert not refused_for_good(proxy, "account-key", None, now)  # not storage's word
    # A SAS valid from a time ahead, or within the clock skew: valid soon, so not for good.
    assert not refused_for_good(wrong, "sas", now + 60, now)
    assert not refused_for_good(wrong, "sas", now - CLOCK_SKEW_S / 2, now)
    assert refused_for_good(wrong, "sas", now - CLOCK_SKEW_S - 1, now)


def test_a_sas_start_time_is_read_in_each_form_azure_takes() -> None:
    assert sas_valid_from("sv=2024-01-01&st=2026-12-04T10:00:00Z&sig=x") == 1796378400.0
    assert sas_valid_from("?st=2026-12-04&se=2026-12-05&sig=x") == 1796342400.0
    assert sas_valid_from("st=2026-12-04T10%3A00%3A00Z&sig=x") == 1796378400.0
    assert sas_valid_from("sv=2024-01-01&sig=x") is None
    assert sas_valid_from("st=yesterday&sig=x") is None
