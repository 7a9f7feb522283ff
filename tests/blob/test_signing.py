"""The lean path's Shared Key signature is byte for byte the one the SDK's own policy computes
for the same request: the SDK is the oracle, over many requests."""

import random
from urllib.parse import quote

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest
from azure.storage.blob._shared.authentication import (  # pyright: ignore[reportPrivateUsage]
    SharedKeyCredentialPolicy,
)
from yarl import URL

from nfs_watcher_uploader.blob.signing import SharedKey
from tests.support.helpers import ACCOUNT, KEY

BASE = f"http://127.0.0.1:10000/{ACCOUNT}"
NAMES = [
    "a.bin",
    "20261204/s1/cam 2/rec one.bin",
    "20261204/s1/ä ö ü ß.bin",
    "20261204/s1/日本語/ファイル.mp4",
    "x+y=z&q;r,s.bin",
    "100% done~2.bin",
    "tilde~and_underscore-and.dot",
    "brackets[1](2){3}.bin",
    "emoji 🎥.bin",
    "quote'and\"double.bin",
    "a/b/c/d/e/f/g/h.bin",
]
# Query strings as the requests put them (values percent-encoded as in the URL).
QUERIES = [
    "",
    "comp=block&blockid=" + quote("MDAwMDAwMDAtYWJjZGVm+/==", safe=""),
    "comp=blocklist",
    "comp=block&blockid=YmxvY2tpZC0x",
    "restype=container&comp=list&prefix=" + quote("2026/ä", safe=""),
    "comp=tags",
]


def _sdk(method: str, url: str, headers: dict[str, str]) -> str:
    """The Authorization the SDK's policy sets, the request sent by its aiohttp transport."""
    request = HttpRequest(method, url, headers=dict(headers))
    policy = SharedKeyCredentialPolicy(ACCOUNT, KEY)
    policy.on_request(PipelineRequest(request, PipelineContext(AioHttpTransport())))  # pyright: ignore[reportArgumentType]
    return request.headers["Authorization"]


def _ours(method: str, url: str, headers: dict[str, str]) -> str:
    _, _, query = url.partition("?")
    pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    return SharedKey(ACCOUNT, KEY).authorization(method, URL(url).raw_path, pairs, headers)


def _headers(rng: random.Random) -> dict[str, str]:
    headers = {
        "x-ms-version": "2026-10-06",
        "x-ms-date": "Fri, 04 Dec 2026 22:09:51 GMT",
        "x-ms-client-request-id": "6daf5322-f02f-11f1-8b7e-02fc00000001",
        "Accept": "application/xml",
    }
    optional = {
        "Content-Length": rng.choice(["0", "11", "65536", "8388608"]),
        "Content-Type": rng.choice(["application/octet-stream", "application/xml", ""]),
        "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
        "If-None-Match": "*",
        "If-Match": '"0x8DB"',
        "Content-Encoding": "",
        "x-ms-blob-type": "BlockBlob",
        "x-ms-blob-content-type": rng.choice(["video/mp4", "text/plain; charset=utf-8"]),
        "x-ms-blob-content-md5": "XrY7u+Ae7tCTyyK7j1rNww==",
        "x-ms-meta-session": "s1",
        "x-ms-meta-source_id": "jetson-7",
        "x-ms-meta-source_mtime": "2026-12-04T08:15:02.123456Z",
        "x-ms-meta-uploader_version": "0.1.0",
        "x-ms-meta-md5": "5eb63bbbe01eeed093cb22bb8f5acdc3",
        "x-ms-meta-Camera-Name": "front-left",
        "x-ms-meta-a1": "",
        # Names the service's collation orders otherwise than a plain sort would.
        "x-ms-meta-a_b": "u",
        "x-ms-meta-a9": "9",
        "x-ms-meta-sourceid": "no underscore",
        "x-ms-meta-a-b": "h",
        "x-ms-meta-ab": "ab",
        "x-ms-tags": "session=s1&site=north%20gate",
        "x-ms-access-tier": rng.choice(["Hot", "Cool", "Cold", "Archive"]),
        "x-ms-range": "bytes=0-1023",
        "X-MS-Upper": "not signed as x-ms (the SDK is case-sensitive there)",
        "User-Agent": "azsdk-python-storage-blob/12.31.1 Python/3.12.1",
    }
    for name, value in optional.items():
        if rng.random() < 0.6:
            headers[name] = value
    items = list(headers.items())
    rng.shuffle(items)  # the order headers were added in must not matter
    return dict(items)


@pytest.mark.parametrize("seed", range(40))
def test_the_shared_key_signature_is_the_sdks_for_any_request(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        method = rng.choice(["PUT", "GET", "HEAD", "DELETE"])
        name = rng.choice(NAMES)
        query = rng.choice(QUERIES)
        url = f"{BASE}/container-1/{quote(name, safe='~/')}" + (f"?{query}" if query else "")
        headers = _headers(rng)
        assert _ours(method, url, headers) == _sdk(method, url, headers), (method, url, headers)


def test_an_empty_body_signs_no_content_length() -> None:
    """The SDK drops a Content-Length of 0 (and any empty header) from the string it signs."""
    url = f"{BASE}/c/empty.bin"
    headers = {"x-ms-version": "2026-10-06", "Content-Length": "0", "Content-Type": ""}
    assert _ours("PUT", url, headers) == _sdk("PUT", url, headers)
    with_length = _ours("PUT", url, {**headers, "Content-Length": "1"})
    assert with_length != _ours("PUT", url, headers)


def test_the_header_order_is_worked_out_once_per_set_of_names() -> None:
    key = SharedKey(ACCOUNT, KEY)
    headers = {"x-ms-meta-b": "1", "x-ms-meta-a": "2", "x-ms-version": "v"}
    first = key.authorization("PUT", "/a/b", [], headers)
    assert key.authorization("PUT", "/a/b", [], {**headers, "x-ms-meta-b": "1"}) == first
    assert len(key._orders) == 1  # pyright: ignore[reportPrivateUsage]
    assert "key" not in repr(key).lower() or KEY not in repr(key)
