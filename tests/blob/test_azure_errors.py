"""Azure's answers map to what the caller does: retry later, or park the file."""

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from nfs_watcher_uploader.blob.azure_errors import check_blob_name, classify
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
