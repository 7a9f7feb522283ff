"""The single put of a small file, on a lean pipeline: the SDK's own retry, header and
credential policies over the metered transport, and nothing else.

A BlobClient per blob and the SDK's full request pipeline cost about 2 ms of CPU per file,
most of what the service spends on a small file (BENCHMARKS.md). This sends the very request
the SDK sends for `upload_blob(data, content_settings=..., transactional_content_md5=md5,
metadata=..., tags=..., standard_blob_tier=...)`: Put Blob with x-ms-blob-type BlockBlob, the
MD5 of the bytes read from NFS as the transactional Content-MD5 (Azure refuses the bytes if
they differ) and as the blob's stored Content-MD5, the blob's Content-Type, metadata, tags and
tier (BlobInfo), and If-None-Match: * unless it overwrites. Signing, the date, the request id
and retries are the SDK's policies, taken from the connected client; errors are raised as the
SDK raises them (the same exception types, with `error_code`).
"""

import base64
import re
from typing import Any, cast
from urllib.parse import quote

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest
from azure.storage.blob._serialize import (  # pyright: ignore[reportPrivateUsage]
    serialize_blob_tags_header,
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from nfs_watcher_uploader.blob.blobinfo import BlobInfo

_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    403: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    412: ResourceModifiedError,
}
_CODE_RE = re.compile(r"<Code>([^<]+)</Code>")


class SinglePut:
    """Put Blob for one connected container."""

    def __init__(
        self, client: BlobServiceClient, container: ContainerClient, transport: Any
    ) -> None:
        # The connected client's own policies: whatever credential it was made with.
        config: Any = client._config  # pyright: ignore[reportPrivateUsage]
        policies: list[Any] = [config.retry_policy, config.headers_policy]
        credential = cast(Any, client._credential_policy)  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType]
        if credential is not None:  # None: a SAS in the URL
            policies.append(credential)
        self._pipeline: Any = AsyncPipeline(transport, policies=policies)
        base, _, query = container.url.partition("?")
        self._base, self._query = base.rstrip("/"), f"?{query}" if query else ""
        self._version = client.api_version

    def __repr__(self) -> str:
        return f"SinglePut({self._base})"

    async def put(
        self,
        blob_name: str,
        data: bytes,
        md5: bytes,
        condition: dict[str, Any] | None,
        info: BlobInfo,
    ) -> str | None:
        """Put Blob; `condition` is {"if_none_match": "*"} (create only), {"if_match": etag},
        or None (unconditional). Returns the new ETag."""
        digest = base64.b64encode(md5).decode()
        headers = {
            "x-ms-version": self._version,
            "x-ms-blob-type": "BlockBlob",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Content-MD5": digest,
            "x-ms-blob-content-md5": digest,
            "x-ms-blob-content-type": info.content_type,
        }
        headers.update({f"x-ms-meta-{k}": v for k, v in info.metadata.items()})
        if info.tags is not None:
            headers["x-ms-tags"] = serialize_blob_tags_header(info.tags) or ""
        if info.tier is not None:
            headers["x-ms-access-tier"] = str(info.tier.value)
        if condition and condition.get("if_none_match"):
            headers["If-None-Match"] = str(condition["if_none_match"])
        if condition and condition.get("if_match"):
            headers["If-Match"] = str(condition["if_match"])
        url = f"{self._base}/{quote(blob_name, safe='~/')}{self._query}"
        request = HttpRequest("PUT", url, headers=headers, content=data)
        response: Any = (await self._pipeline.run(request)).http_response
        if response.status_code != 201:
            raise _error(response)
        etag = response.headers.get("ETag")
        return None if etag is None else str(etag)


def _error(response: Any) -> HttpResponseError:
    """The exception the SDK raises for this answer, with the service's error code."""
    try:
        text: str = response.text()
    except Exception:  # no body read: the status and the header say enough
        text = ""
    code = response.headers.get("x-ms-error-code")
    if code is None and (found := _CODE_RE.search(text)):
        code = found[1]
    kind = _ERRORS.get(response.status_code, HttpResponseError)
    error = kind(message=f"{response.status_code} {code or ''} {text[:300]}", response=response)
    error.error_code = code  # pyright: ignore[reportAttributeAccessIssue]
    return error
