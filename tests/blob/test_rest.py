"""The lean request path sends what the SDK sends: Put Blob, Put Block and Put Block List of both,
captured on the wire by a relay in front of Azurite, are the same header for header (the date,
request id and signature apart, which differ per attempt) and byte for byte in their bodies,
with every credential the service can connect with; Azurite accepts both."""

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.credentials import AzureSasCredential
from azure.storage.blob import ContainerSasPermissions, ContentSettings, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from nfs_watcher_uploader.blob.blobinfo import BlobInfo, BlobLabels
from nfs_watcher_uploader.blob.block_ids import block_id
from nfs_watcher_uploader.blob.rest import BlobHeaders, Rest
from nfs_watcher_uploader.config import AccessTier, Settings
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import Meter, MeteredTransport, Wire, new_session
from tests.support.helpers import ACCOUNT, KEY, Azurite
from tests.support.relay import Relay, Request

# Differ from one attempt to the next by design (the SDK makes them per attempt too).
PER_ATTEMPT = {"x-ms-date", "x-ms-client-request-id", "authorization"}
NAME = "20261204/cam one/ä ö+ü~ß 日本.mp4"
DATA = bytes(range(256)) * 40
MD5 = hashlib.md5(DATA).digest()


def _sas(container: str) -> str:
    from datetime import UTC, datetime, timedelta

    permission = ContainerSasPermissions(read=True, create=True, write=True, tag=True)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return generate_container_sas(
        ACCOUNT, container, account_key=KEY, permission=permission, expiry=expiry
    )


def _clients(kind: str, url: str, container: str, kwargs: dict[str, Any]) -> BlobServiceClient:
    """A client of each kind the credential chain makes (blob/credentials.candidates)."""
    if kind == "connection-string":
        conn = f"AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url};"
        return BlobServiceClient.from_connection_string(conn, **kwargs)
    if kind == "account-key":
        return BlobServiceClient(url, {"account_name": ACCOUNT, "account_key": KEY}, **kwargs)
    if kind == "sas":
        return BlobServiceClient(url, AzureSasCredential(_sas(container)), **kwargs)
    if kind == "sas-connection-string":
        conn = f"BlobEndpoint={url};SharedAccessSignature={_sas(container)}"
        return BlobServiceClient.from_connection_string(conn, **kwargs)
    raise AssertionError(kind)


@dataclass
class Both:
    """The SDK's client and the lean path over one metered session, through the relay."""

    relay: Relay
    container: ContainerClient
    rest: Rest


@asynccontextmanager
async def both(relay: Relay, kind: str, container: str) -> AsyncIterator[Both]:
    session = new_session()
    wire = Wire(Meter(TokenBucket()), session, 20, 120)
    kwargs = {"transport": MeteredTransport(wire, connection_timeout=20, read_timeout=120)}
    client = _clients(kind, relay.url, container, kwargs)
    try:
        container_client = client.get_container_client(container)
        yield Both(relay, container_client, Rest(client, container_client, wire))
    finally:
        await client.close()
        await session.close()


def _info() -> BlobInfo:
    settings = Settings(
        azure_account_url="http://127.0.0.1:1/devstoreaccount1",
        azure_container="c",
        azure_tags={"site": "north gate", "rig": "7"},
        azure_access_tier=AccessTier.COOL,
        source_id="jetson-7",
    )
    return BlobLabels(settings).for_file("cam one", NAME, MD5, 1_764_836_102_123_456_789)


def _same(
    sdk: list[Request],
    lean: list[Request],
    sdk_name: str,
    lean_name: str,
    own: frozenset[str] = frozenset(),
) -> None:
    """`own`: headers whose values are each blob's own (an If-Match ETag): there on both."""
    assert len(sdk) == len(lean) == 1, (sdk, lean)
    a, b = sdk[0], lean[0]
    assert a.method == b.method
    assert a.target.replace(sdk_name, lean_name) == b.target
    ha, hb = a.header_map(), b.header_map()
    for name in PER_ATTEMPT | own:
        assert (name in ha) == (name in hb), name
    strip = lambda h: {k: v for k, v in h.items() if k not in PER_ATTEMPT | own}  # noqa: E731
    assert strip(ha) == strip(hb)
    assert a.body == b.body


def _names(tag: str) -> tuple[str, str, str, str]:
    from urllib.parse import quote

    sdk, lean = f"sdk-{tag}/{NAME}", f"lean-{tag}/{NAME}"
    return sdk, lean, quote(sdk, safe="~/"), quote(lean, safe="~/")


@pytest.fixture
def recorder(azurite: Azurite) -> Any:
    relay = Relay(azurite.port, record=True).start()
    yield relay
    relay.stop()


@pytest.fixture
def made(azurite: Azurite) -> str:
    name = f"rest{uuid.uuid4().hex[:20]}"
    azurite.container(name).create_container()
    return name


KINDS = ["connection-string", "account-key", "sas", "sas-connection-string"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("overwrite", [False, True])
async def test_put_blob_is_the_sdks_upload_blob(
    recorder: Relay, made: str, kind: str, overwrite: bool
) -> None:
    info = _info()
    sdk_name, lean_name, sdk_q, lean_q = _names(f"{kind}-{overwrite}")
    async with both(recorder, kind, made) as b:
        await b.container.get_blob_client(sdk_name).upload_blob(
            DATA,
            overwrite=overwrite,
            content_settings=ContentSettings(
                content_type=info.content_type, content_md5=bytearray(MD5)
            ),
            validate_content=True,
            **info.upload_kwargs(),
        )
        sdk = recorder.recorded()
        await b.rest.put_blob(lean_name, DATA, MD5, BlobHeaders.of(info, MD5, overwrite))
        lean = recorder.recorded()
    _same(sdk, lean, sdk_q, lean_q)
    header = lean[0].header_map()
    assert header["content-md5"] == header["x-ms-blob-content-md5"]
    assert ("if-none-match" in header) is not overwrite
    assert header["x-ms-meta-session"] == "cam one" and header["x-ms-access-tier"] == "Cool"
    assert "session=cam%20one" in header["x-ms-tags"]


@pytest.mark.parametrize("kind", KINDS)
async def test_put_block_and_put_block_list_are_the_sdks(
    recorder: Relay, made: str, kind: str
) -> None:
    info = _info()
    sdk_name, lean_name, sdk_q, lean_q = _names(kind)
    key = bytes(32)
    halves = [DATA[: len(DATA) // 2], DATA[len(DATA) // 2 :]]
    md5s = [hashlib.md5(h).digest() for h in halves]
    ids = [block_id(key, i, m) for i, m in enumerate(md5s)]
    async with both(recorder, kind, made) as b:
        blob = b.container.get_blob_client(sdk_name)
        for i, half in enumerate(halves):
            # As the service sent blocks before this path (blocks.py, early.py).
            await blob.stage_block(ids[i], half, transactional_content_md5=md5s[i])
            sdk = recorder.recorded()
            await b.rest.put_block(lean_name, ids[i], half, md5s[i])
            _same(sdk, recorder.recorded(), sdk_q, lean_q)
        settings = ContentSettings(content_type=info.content_type, content_md5=bytearray(MD5))
        commit: Any = blob.commit_block_list  # takes ids as strings too
        await commit(ids, content_settings=settings, if_none_match="*", **info.upload_kwargs())
        sdk = recorder.recorded()
        await b.rest.put_block_list(lean_name, ids, BlobHeaders.of(info, MD5, overwrite=False))
        lean = recorder.recorded()
    _same(sdk, lean, sdk_q, lean_q)
    assert await _read(recorder, made, lean_name) == DATA


async def _read(relay: Relay, container: str, name: str) -> bytes:
    """The blob's bytes, read with the account key."""
    key = {"account_name": ACCOUNT, "account_key": KEY}
    async with BlobServiceClient(relay.url, key) as client:
        blob = client.get_container_client(container).get_blob_client(name)
        return await (await blob.download_blob()).readall()


@pytest.mark.parametrize("kind", ["connection-string", "sas"])
async def test_an_if_match_overwrite_is_the_sdks_and_replaces_only_the_version_it_names(
    recorder: Relay, made: str, kind: str
) -> None:
    """A file sent again whole over its own blob (a late write) carries If-Match: the ETag its
    commit left (APP_COORDINATION=azure: never over another member's version). Put Blob and
    Put Block List with If-Match are the SDK's with etag + MatchConditions.IfNotModified; the
    ETag each returns is the blob's new one, and a stale ETag is refused (412), the blob kept."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError

    info = _info()
    sdk_name, lean_name, sdk_q, lean_q = _names(f"if-match-{kind}")
    settings = ContentSettings(content_type=info.content_type, content_md5=bytearray(MD5))
    async with both(recorder, kind, made) as b:
        sdk_blob = b.container.get_blob_client(sdk_name)
        first_sdk = await sdk_blob.upload_blob(DATA, content_settings=settings)
        first = await b.rest.put_blob(lean_name, DATA, MD5, BlobHeaders.of(info, MD5, False))
        assert first is not None and first.startswith('"')
        recorder.recorded()
        # Put Blob over the version this file's commit left.
        await sdk_blob.upload_blob(
            DATA,
            overwrite=True,
            content_settings=settings,
            validate_content=True,
            etag=first_sdk["etag"],
            match_condition=MatchConditions.IfNotModified,
            **info.upload_kwargs(),
        )
        sdk = recorder.recorded()
        condition = {"If-Match": first}
        second = await b.rest.put_blob(
            lean_name, DATA, MD5, BlobHeaders.of(info, MD5, True, condition)
        )
        lean = recorder.recorded()
        _same(sdk, lean, sdk_q, lean_q, frozenset({"if-match"}))
        assert sdk[0].header_map()["if-match"] == first_sdk["etag"]
        assert lean[0].header_map()["if-match"] == first
        assert "if-none-match" not in lean[0].header_map()
        assert second is not None and second != first
        # Put Block List over that version, as commit_block_list(etag=..., IfNotModified).
        ids = [block_id(bytes(32), 0, MD5)]
        sdk_props = await sdk_blob.get_blob_properties()
        await sdk_blob.stage_block(ids[0], DATA, transactional_content_md5=MD5)
        await b.rest.put_block(lean_name, ids[0], DATA, MD5)
        recorder.recorded()
        commit: Any = sdk_blob.commit_block_list
        await commit(
            ids,
            content_settings=settings,
            etag=sdk_props.etag,
            match_condition=MatchConditions.IfNotModified,
            **info.upload_kwargs(),
        )
        sdk = recorder.recorded()
        blob = BlobHeaders.of(info, MD5, True, {"If-Match": second})
        third = await b.rest.put_block_list(lean_name, ids, blob)
        lean = recorder.recorded()
        _same(sdk, lean, sdk_q, lean_q, frozenset({"if-match"}))
        assert lean[0].header_map()["if-match"] == second
        assert third is not None and third not in (first, second)
        # A version it did not write (the ETag is stale now): refused, the blob kept.
        with pytest.raises(ResourceModifiedError) as refused:
            await b.rest.put_blob(lean_name, DATA, MD5, BlobHeaders.of(info, MD5, True, condition))
        assert refused.value.status_code == 412
        recorder.recorded()
    props = await _props(recorder, made, lean_name)
    assert props == third
    assert await _read(recorder, made, lean_name) == DATA


async def _props(relay: Relay, container: str, name: str) -> str:
    """The blob's ETag, read with the account key."""
    key = {"account_name": ACCOUNT, "account_key": KEY}
    async with BlobServiceClient(relay.url, key) as client:
        blob = client.get_container_client(container).get_blob_client(name)
        return str((await blob.get_blob_properties()).etag)


def test_a_request_shown_never_shows_its_sas_or_its_authorization() -> None:
    """Review of issues 22/23: the lean path's request object is what a traceback or a debug
    line would show; its SAS query and Authorization header are never in it."""
    from nfs_watcher_uploader.blob.rest import _Request  # pyright: ignore[reportPrivateUsage]

    request = _Request(
        "PUT",
        "https://acct.blob.core.windows.net/c/20261205/s/a.bin?sv=2024&sig=SECRETSIG",
        {"Authorization": "SharedKey acct:SECRETKEY", "x-ms-version": "2025-01-05"},
        b"x" * 10,
    )
    shown = repr(request)
    assert "SECRETSIG" not in shown and "SECRETKEY" not in shown
    assert "PUT" in shown and "/c/20261205/s/a.bin" in shown
