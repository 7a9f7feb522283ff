"""When storage fails, the lean request path does what the SDK does: the same answers and
errors are retried, as many times, by the client's own retry policy; what it raises is the
exception the SDK raises (class, status, error code), so `azure_errors` judges it alike; and
a token credential's bearer token, its caching and a 401 challenge go as in the SDK.

Both are given the same scripted answers by a stand-in for storage (tests/support/fake_storage)."""

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import AzureError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from nfs_watcher_uploader.blob.azure_errors import classify, error_code
from nfs_watcher_uploader.blob.blobinfo import BlobInfo
from nfs_watcher_uploader.blob.rest import BlobHeaders, Rest
from nfs_watcher_uploader.uplink.bandwidth import TokenBucket
from nfs_watcher_uploader.uplink.wire import Meter, MeteredTransport, Wire
from tests.support.fake_storage import DROP, FakeStorage, Reply, self_signed
from tests.support.helpers import ACCOUNT, KEY

DATA = b"scripted bytes" * 100
MD5 = hashlib.md5(DATA).digest()
INFO = BlobInfo("video/mp4", {"session": "s1"})
BLOCK_ID = "00000000-0123456789abcdef0123456789abcdef"
# The service's retry settings, without the waiting (the backoff is the policy's own).
RETRY: dict[str, Any] = {
    "retry_total": 2,
    "initial_backoff": 0,
    "increment_base": 0,
    "random_jitter_range": 0,
}


@dataclass
class Side:
    """One way of sending (the SDK's client, or the lean path) over its own session."""

    client: BlobServiceClient
    rest: Rest
    blob: BlobClient


@asynccontextmanager
async def sides(
    storage: FakeStorage, credential: Callable[[], Any], tls: Any = None
) -> AsyncIterator[tuple[Side, Side]]:
    made: list[Side] = []
    sessions: list[aiohttp.ClientSession] = []
    try:
        for _ in range(2):
            connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            sessions.append(session)
            wire = Wire(Meter(TokenBucket()), session, 5, 5)
            transport = MeteredTransport(wire, connection_timeout=5, read_timeout=5)
            client = BlobServiceClient(storage.url, credential(), transport=transport, **RETRY)
            container = client.get_container_client("c")
            made.append(
                Side(client, Rest(client, container, wire), container.get_blob_client("b.bin"))
            )
        yield made[0], made[1]
    finally:
        for side in made:
            await side.client.close()
        for session in sessions:
            await session.close()


def _key() -> dict[str, str]:
    return {"account_name": ACCOUNT, "account_key": KEY}


async def _sdk_put_blob(side: Side) -> None:
    settings = ContentSettings(content_type=INFO.content_type, content_md5=bytearray(MD5))
    await side.blob.upload_blob(
        DATA,
        overwrite=False,
        content_settings=settings,
        validate_content=True,
        **INFO.upload_kwargs(),
    )


async def _lean_put_blob(side: Side) -> None:
    await side.rest.put_blob("b.bin", DATA, MD5, BlobHeaders.of(INFO, MD5, overwrite=False))


async def _sdk_put_block(side: Side) -> None:
    await side.blob.stage_block(BLOCK_ID, DATA, transactional_content_md5=MD5)


async def _lean_put_block(side: Side) -> None:
    await side.rest.put_block("b.bin", BLOCK_ID, DATA, MD5)


async def _sdk_put_block_list(side: Side) -> None:
    settings = ContentSettings(content_type=INFO.content_type, content_md5=bytearray(MD5))
    commit: Any = side.blob.commit_block_list  # takes ids as strings too
    await commit([BLOCK_ID], content_settings=settings, if_none_match="*", **INFO.upload_kwargs())


async def _lean_put_block_list(side: Side) -> None:
    await side.rest.put_block_list("b.bin", [BLOCK_ID], BlobHeaders.of(INFO, MD5, overwrite=False))


Op = Callable[[Side], Awaitable[None]]
OPS: dict[str, tuple[Op, Op]] = {
    "put blob": (_sdk_put_blob, _lean_put_blob),
    "put block": (_sdk_put_block, _lean_put_block),
    "put block list": (_sdk_put_block_list, _lean_put_block_list),
}
SCRIPTS: dict[str, list[Reply | str]] = {
    "busy twice, then done": [Reply(503, "ServerBusy"), Reply(503, "ServerBusy")],
    "internal error every time": [Reply(500, "InternalError")] * 4,
    "timeout once": [Reply(408, "OperationTimedOut")],
    "name taken": [Reply(409, "BlobAlreadyExists")],
    "condition not met": [Reply(412, "ConditionNotMet")],
    "md5 mismatch": [Reply(400, "Md5Mismatch")],
    "invalid block": [Reply(400, "InvalidBlobOrBlock")],
    "may not read": [Reply(403, "AuthorizationPermissionMismatch")],
    "bad signature": [Reply(403, "AuthenticationFailed")],
    "no container": [Reply(404, "ContainerNotFound")],
    "too large": [Reply(413, "RequestBodyTooLarge")],
    "not implemented": [Reply(501, "NotImplemented")],
    "connection dropped once": [DROP],
    "connection dropped every time": [DROP] * 4,
}


@dataclass
class Outcome:
    requests: int
    error: dict[str, Any] = field(default_factory=dict[str, Any])


async def _run(storage: FakeStorage, op: Op, side: Side, script: list[Reply | str]) -> Outcome:
    storage.script = list(script)
    storage.take()
    try:
        await op(side)
    except AzureError as exc:
        judged = classify(exc)
        return Outcome(
            len(storage.take()),
            {
                "type": type(exc).__name__,
                "status": getattr(exc, "status_code", None),
                "code": error_code(exc),
                "judged": type(judged).__name__,
                "message": str(exc).splitlines()[0] if getattr(exc, "status_code", None) else "",
            },
        )
    return Outcome(len(storage.take()))


@pytest.fixture
async def storage() -> AsyncIterator[FakeStorage]:
    server = await FakeStorage().start()
    yield server
    await server.stop()


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("op", OPS)
async def test_failures_are_retried_and_raised_as_the_sdk_does(
    storage: FakeStorage, op: str, script: str
) -> None:
    sdk_op, lean_op = OPS[op]
    async with sides(storage, _key) as (sdk, lean):
        expected = await _run(storage, sdk_op, sdk, SCRIPTS[script])
        got = await _run(storage, lean_op, lean, SCRIPTS[script])
    assert got == expected
    assert expected.requests >= 1


async def test_the_retry_policy_is_the_clients_own(storage: FakeStorage) -> None:
    async with sides(storage, _key) as (_, lean):
        config: Any = lean.client._config  # pyright: ignore[reportPrivateUsage]
        assert lean.rest._retry is config.retry_policy  # pyright: ignore[reportPrivateUsage]


@dataclass
class FakeToken:
    """A token credential that hands out token-1, token-2, ... and remembers what it was asked."""

    asked: list[tuple[tuple[str, ...], dict[str, Any]]] = field(
        default_factory=list[tuple[tuple[str, ...], dict[str, Any]]]
    )

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.asked.append((scopes, kwargs))
        return AccessToken(f"token-{len(self.asked)}", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> "FakeToken":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


CHALLENGE = (
    "WWW-Authenticate",
    "Bearer authorization_uri=https://login.microsoftonline.com/tenant-2/oauth2/authorize "
    "resource_id=https://storage.azure.com",
)


@pytest.mark.parametrize("op", OPS)
async def test_a_bearer_token_is_added_cached_and_renewed_on_a_challenge_as_by_the_sdk(
    tmp_path: Path, op: str
) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    storage = await FakeStorage(tls=server_tls).start()
    tokens: list[FakeToken] = []

    def credential() -> FakeToken:
        tokens.append(FakeToken())
        return tokens[-1]

    sdk_op, lean_op = OPS[op]
    try:
        async with sides(storage, credential, client_tls) as (sdk, lean):
            seen: list[list[Any]] = []
            for side, run in ((sdk, sdk_op), (lean, lean_op)):
                storage.take()
                await run(side)  # a token asked for
                await run(side)  # the same token, cached
                storage.script = [Reply(401, "InvalidAuthenticationInfo", (CHALLENGE,))]
                await run(side)  # the challenge: a token for its tenant, and the request again
                seen.append([r.header_map().get("authorization") for r in storage.take()])
    finally:
        await storage.stop()
    assert (
        seen[0]
        == seen[1]
        == ["Bearer token-1", "Bearer token-1", "Bearer token-1", "Bearer token-2"]
    )
    assert tokens[0].asked == tokens[1].asked
    assert tokens[1].asked[-1][1].get("tenant_id") == "tenant-2"
