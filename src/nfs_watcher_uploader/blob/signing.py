"""Shared Key signatures for the lean request path: the string the SDK's
SharedKeyCredentialPolicy signs, built from the parts of a request, with the order of its
`x-ms-*` headers worked out once per set of names.

The SDK sorts a request's `x-ms-*` header names with a pure-Python comparator emulating the
service's collation, on every request (six to nine names per blob: metadata, tags, tier), which
cost a small file more than the signature itself. The names of our requests come in a few fixed
sets, so the order is taken from the SDK's own comparator once per set and kept. Everything
else is the SDK's canonicalization, in the same order (tests/blob/test_signing.py checks the
Authorization of many requests against the SDK's policy, byte for byte):

    VERB\\n
    Content-Encoding ... Range: the eleven standard headers' values (absent or empty: "";
                                 Content-Length 0: "")
    x-ms-name:value\\n           for each x-ms-* header, in the service's order
    /account/path              the path as sent (percent-encoded as aiohttp sends it)
    \\nname:value               for each query parameter, sorted, lower-case name, decoded value
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from functools import cmp_to_key
from urllib.parse import unquote

from azure.storage.blob._shared.authentication import (  # pyright: ignore[reportPrivateUsage]
    compare,
)

# The headers the SDK signs by name, in its order (Date is sent as x-ms-date).
_STANDARD = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "byte_range",
)
_ORDER_CACHE_MAX = 64


class SharedKey:
    """Signs requests for one account with its key (base64, as Azure shows it)."""

    def __init__(self, account_name: str, account_key: str) -> None:
        self.account_name = account_name
        self._key = base64.b64decode(account_key)
        self._prefix = f"SharedKey {account_name}:"
        self._resource = f"/{account_name}"
        # Names of the x-ms-* headers, as sent -> the order the service sorts them in.
        self._orders: dict[tuple[str, ...], tuple[int, ...]] = {}

    def __repr__(self) -> str:  # never the key
        return f"SharedKey({self.account_name})"

    def authorization(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> str:
        """The Authorization header's value for a request: `path` as it goes on the wire
        (percent-encoded), `query` its parameters as in the URL (percent-encoded values)."""
        standard: dict[str, str] = {}
        x_ms: list[tuple[str, str]] = []
        for name, value in headers.items():
            if name.startswith("x-ms-"):
                x_ms.append((name, value))
            if value:
                standard[name.lower()] = value
        if standard.get("content-length") == "0":
            del standard["content-length"]
        parts = [method, "\n"]
        parts.append("\n".join(standard.get(name, "") for name in _STANDARD))
        parts.append("\n")
        for index in self._order(tuple(name for name, _ in x_ms)):
            name, value = x_ms[index]
            parts += (name.lower(), ":", value, "\n")
        parts += (self._resource, path)
        for name, value in sorted(query):
            parts += ("\n", name.lower(), ":", unquote(value))
        digest = hmac.digest(self._key, "".join(parts).encode("utf-8"), hashlib.sha256)
        return self._prefix + base64.b64encode(digest).decode()

    def _order(self, names: tuple[str, ...]) -> tuple[int, ...]:
        """The positions of `names` in the order the SDK's comparator sorts them (by the
        lower-case name, as the SDK compares them)."""
        order = self._orders.get(names)
        if order is None:
            key = cmp_to_key(compare)
            order = tuple(sorted(range(len(names)), key=lambda i: key(names[i].lower())))
            if len(self._orders) >= _ORDER_CACHE_MAX:  # bounded: names come from settings
                self._orders.clear()
            self._orders[names] = order
        return order
