"""A least-privilege SAS (`cw`) is enough, never overwrites, and loses nothing across a crash."""

import hashlib
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from nfs_watcher_uploader.blob.storage import Storage
from nfs_watcher_uploader.config import NameConflict, Settings
from nfs_watcher_uploader.errors import CannotStart, PermanentError, RetryableError
from nfs_watcher_uploader.nfs import copying
from tests.support.helpers import (
    KEY,
    Azurite,
    RunningService,
    ServiceProcess,
    blob_bytes,
    leftover_files,
    wait_for,
    write_file,
)

BLOCK = 64 * 1024


@pytest.fixture
def container(azurite: Azurite) -> str:
    """A container that exists (made with the account key), as an administrator would make it
    for a device that holds only a SAS."""
    name = f"sas{uuid.uuid4().hex[:20]}"
    azurite.container(name).create_container()
    return name


def _cw(azurite: Azurite, container: str) -> str:
    return azurite.container_sas(container, "cw")


def _sas_settings(azurite: Azurite, container: str, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "azure_account_url": azurite.url,
        "azure_container": container,
        "azure_create_container": False,
    }
    return Settings(**{**base, **values})


def _staged(tmp_path: Path, data: bytes) -> tuple[Path, copying.Staged]:
    """A staged copy of `data`, in blocks of BLOCK when it is larger than that."""
    name = uuid.uuid4().hex
    src = write_file(tmp_path / "src" / name, data)
    dst = tmp_path / "staged" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst, copying.copy_and_hash(src, dst, lambda: None, BLOCK, BLOCK, 0)


async def _upload(storage: Storage, tmp_path: Path, name: str, data: bytes) -> Any:
    local, staged = _staged(tmp_path, data)
    return await storage.upload(local, name, staged, lambda: None)


def test_azurite_enforces_the_sas_permissions_the_tests_rely_on(
    azurite: Azurite, container: str
) -> None:
    """Checked before the tests below rely on it."""
    cw = BlobServiceClient(azurite.url, azurite.container_sas(container, "cw"))
    blob = cw.get_container_client(container).get_blob_client("probe.bin")
    blob.upload_blob(b"x")
    for read in (blob.get_blob_properties, blob.download_blob):
        with pytest.raises(HttpResponseError) as info:
            read()
        code = getattr(info.value, "error_code", None)
        assert info.value.status_code == 403
        assert getattr(code, "value", code) == "AuthorizationPermissionMismatch"
    rcw = BlobServiceClient(azurite.url, azurite.container_sas(container, "rcw"))
    assert rcw.get_container_client(container).get_blob_client("probe.bin").exists()


async def test_a_cw_sas_uploads_and_never_overwrites(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    storage = Storage(_sas_settings(azurite, container, azure_sas_token=_cw(azurite, container)))
    await storage.connect()
    try:
        assert storage.auth_used == "sas" and not storage.can_read
        small, other, big = b"small", b"other bytes", os.urandom(3 * BLOCK + 5)
        first = await _upload(storage, tmp_path, "d/s/a.bin", small)
        assert (first.blob_name, first.compared) == ("d/s/a.bin", True)
        # A re-upload after a crash: the same bytes, but they cannot be read to be compared.
        again = await _upload(storage, tmp_path, "d/s/a.bin", small)
        assert (again.blob_name, again.already, again.compared) == ("d/s/a~2.bin", False, False)
        # A reused name: other bytes.
        reused = await _upload(storage, tmp_path, "d/s/a.bin", other)
        assert reused.blob_name == "d/s/a~3.bin"
        # The same, in blocks.
        assert (await _upload(storage, tmp_path, "d/s/big.bin", big)).blob_name == "d/s/big.bin"
        assert (await _upload(storage, tmp_path, "d/s/big.bin", big)).blob_name == "d/s/big~2.bin"
    finally:
        await storage.close()
    admin = azurite.container(container)
    expected = {
        "d/s/a.bin": small,
        "d/s/a~2.bin": small,
        "d/s/a~3.bin": other,
        "d/s/big.bin": big,
        "d/s/big~2.bin": big,
    }
    for name, data in expected.items():
        assert blob_bytes(admin, name) == data, name
        md5 = admin.get_blob_client(name).get_blob_properties().content_settings.content_md5
        assert bytes(md5 or b"") == hashlib.md5(data).digest(), name


async def test_a_cw_sas_with_park_parks_a_taken_name(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    settings = _sas_settings(
        azurite,
        container,
        azure_sas_token=_cw(azurite, container),
        on_name_conflict=NameConflict.PARK,
    )
    storage = Storage(settings)
    await storage.connect()
    try:
        await _upload(storage, tmp_path, "d/s/p.bin", b"one")
        with pytest.raises(PermanentError, match="bytes it may not read"):
            await _upload(storage, tmp_path, "d/s/p.bin", b"two")
    finally:
        await storage.close()
    assert blob_bytes(azurite.container(container), "d/s/p.bin") == b"one"


async def test_an_rcw_sas_recognises_the_same_bytes(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    sas = azurite.container_sas(container, "rcw")
    storage = Storage(_sas_settings(azurite, container, azure_sas_token=sas))
    await storage.connect()
    try:
        assert storage.can_read
        big = os.urandom(2 * BLOCK + 1)
        for name, data in (("d/s/r.bin", b"r"), ("d/s/rb.bin", big)):
            assert (await _upload(storage, tmp_path, name, data)).blob_name == name
            again = await _upload(storage, tmp_path, name, data)
            assert (again.blob_name, again.already) == (name, True)
        other = await _upload(storage, tmp_path, "d/s/r.bin", b"other")
        assert (other.blob_name, other.compared) == ("d/s/r~2.bin", True)
    finally:
        await storage.close()


async def test_a_sas_in_a_connection_string_uploads(azurite: Azurite, container: str) -> None:
    conn = f"BlobEndpoint={azurite.url};SharedAccessSignature={_cw(azurite, container)}"
    storage = Storage(_sas_settings(azurite, container, azure_connection_string=conn))
    await storage.connect()
    try:
        assert storage.auth_used == "connection-string" and not storage.can_read
    finally:
        await storage.close()


async def test_a_cw_sas_that_must_check_the_container_says_what_to_set(
    azurite: Azurite, container: str
) -> None:
    settings = _sas_settings(
        azurite, container, azure_sas_token=_cw(azurite, container), azure_create_container=True
    )
    # The same SAS is refused the same way at every attempt: start-up stops, saying what to set.
    with pytest.raises(CannotStart, match="needs APP_AZURE_CREATE_CONTAINER=false"):
        await Storage(settings).connect()


async def test_a_missing_container_is_named(azurite: Azurite) -> None:
    name = f"missing{uuid.uuid4().hex[:12]}"
    settings = _sas_settings(azurite, name, azure_sas_token=azurite.container_sas(name, "rcw"))
    with pytest.raises(RetryableError, match=f"container '{name}' does not exist"):
        await Storage(settings).connect()
    assert not azurite.container(name).exists()


async def test_a_refused_sas_hands_over_to_the_next_credential(
    azurite: Azurite, container: str
) -> None:
    forged = _cw(azurite, container).replace("sig=", "sig=AAAA")
    settings = _sas_settings(
        azurite,
        container,
        azure_sas_token=forged,
        azure_connection_string=azurite.connection_string,
    )
    storage = Storage(settings)
    await storage.connect()
    try:
        assert storage.auth_used == "connection-string" and storage.can_read
    finally:
        await storage.close()


@pytest.mark.parametrize("permission", ["cw", "rcw"])
def test_a_session_goes_up_end_to_end_with_a_least_privilege_sas(
    permission: str,
    azurite: Azurite,
    container: str,
    service_factory: Callable[..., RunningService],
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        azure_container=container,
        azure_connection_string=None,
        azure_sas_token=azurite.container_sas(container, permission),
        azure_create_container=False,
        azure_max_single_put_size=BLOCK,
        azure_max_block_size=BLOCK,
    )
    running = service_factory(settings)
    assert running.service.storage.auth_used == "sas"
    date = running.post("/v1/watch/start", json={"session_name": "least"}).json()["date_prefix"]
    admin = azurite.container(container)
    # A blob that already has one of the names, with other bytes (a reused name).
    admin.upload_blob(f"{date}/least/reused.bin", b"an earlier recording")
    files = {
        "small.bin": b"s" * 100,
        "cam2/nested.bin": os.urandom(5000),
        "blocks.bin": os.urandom(5 * BLOCK + 7),
        "reused.bin": b"a later recording",
    }
    for name, data in files.items():
        write_file(settings.nfs_incoming_dir / "least" / name, data)
    where = {name: f"{date}/least/{name}" for name in files}
    where["reused.bin"] = f"{date}/least/reused~2.bin"
    wait_for(
        lambda: all(blob_bytes(admin, blob) for blob in where.values()),
        timeout=60,
        what="every file in storage",
    )
    for name, blob in where.items():
        assert blob_bytes(admin, blob) == files[name], name
        md5 = admin.get_blob_client(blob).get_blob_properties().content_settings.content_md5
        assert bytes(md5 or b"") == hashlib.md5(files[name]).digest(), name
    assert blob_bytes(admin, f"{date}/least/reused.bin") == b"an earlier recording"
    running.post("/v1/watch/stop")
    view = wait_for(
        lambda: (v := running.get("/v1/sessions/least").json())["drained"] and v,
        timeout=60,
        what="the session drained",
    )
    assert view["uploaded"] == len(files) and view["renamed"] == 1
    held = "is taken and the credential may not read it" if permission == "cw" else "other bytes"
    assert any(held in notice for notice in view["notices"]), view["notices"]
    assert running.get("/v1/status").json()["processed_err"] == 0
    assert KEY not in str(running.service.storage)


def test_a_restart_after_a_crash_with_a_cw_sas_loses_nothing(
    azurite: Azurite,
    container: str,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """Killed after the uploads, before GC collected the files: the next run checks them once
    more and, unable to read their blobs to compare, sends each again over its own blob (the
    blob it went up as), then collects it. No copy under another name, nothing left behind."""
    settings = settings_factory(
        azure_container=container,
        azure_connection_string=None,
        azure_sas_token=_cw(azurite, container),
        azure_create_container=False,
        gc_interval_s=600,  # no collection before the kill
    )
    proc = ServiceProcess(settings, tmp_path / "service.log")
    proc.start()
    with proc.client as c:
        date = c.post("/v1/watch/start", json={"session_name": "crash"}).json()["date_prefix"]
    files = {f"f{i}.bin": os.urandom(1000 + i) for i in range(3)}
    for name, data in files.items():
        write_file(settings.nfs_incoming_dir / "crash" / name, data)
    admin = azurite.container(container)
    wait_for(lambda: all(blob_bytes(admin, f"{date}/crash/{n}") for n in files), what="the uploads")
    completed = settings.nfs_processing_root / "_completed" / date / "crash"
    wait_for(lambda: len(list(completed.glob("*.bin"))) == len(files), what="marked completed")
    assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
    first_run = proc.log.read_text().count('"Uploaded ')

    proc.settings = settings.model_copy(update={"gc_interval_s": 0.3})
    proc.start()
    wait_for(lambda: not list(completed.glob("*")), timeout=60, what="GC collected them")
    wait_for(lambda: not leftover_files(tmp_path), timeout=30, what="NFS cleaned up")
    proc.signal(signal.SIGTERM)
    log = proc.log.read_text()
    assert log.count('"Uploaded ') - first_run == len(files)  # each sent once more
    assert sorted(b.name for b in admin.list_blobs()) == sorted(f"{date}/crash/{n}" for n in files)
    for name, data in files.items():
        assert blob_bytes(admin, f"{date}/crash/{name}") == data
    assert "Storage refuses this credential reads" in log
