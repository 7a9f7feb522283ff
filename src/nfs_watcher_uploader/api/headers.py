"""What every answer tells a browser, and the requests a browser may not make for another site.

every answer      X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer,
                  X-Frame-Options: DENY, and a Content-Security-Policy: PAGE_POLICY (no
                  inline script or style, nothing from another origin, no framing, no form
                  posts), DOCS_POLICY for /docs (Swagger UI sets inline styles)
/v1/*             Cache-Control: no-store (names of files are not kept in any cache)
cross-site        a request that changes something (not GET, HEAD or OPTIONS) that a browser
                  marks as coming from another site (`Sec-Fetch-Site`, else an `Origin` that
                  is not this host) is refused with 403 before the app sees it: with no API
                  token configured, another site's page must not stop a session through the
                  operator's browser. Clients that are not browsers (curl, the CLI, a
                  recorder) send neither header and are not affected.
rebinding         with no API token configured, a browser's request that changes something
                  must name this host by an IP address or `localhost`: a page whose own name
                  an attacker's DNS has pointed at this device (DNS rebinding) is same-origin
                  to the browser, and could otherwise stop sessions and dismiss parked files
                  through the operator's browser. With a token it has nothing to send.
"""

import ipaddress
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI (React) writes style attributes into the markup it renders: 'unsafe-inline' for
# styles only, on this one page; its scripts stay 'self'.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
DOCS_PATH = "/docs"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE = frozenset({"same-origin", "none"})


def _common(policy: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]


_PAGE_HEADERS = _common(PAGE_POLICY)
_DOCS_HEADERS = _common(DOCS_POLICY)
_NO_STORE = (b"cache-control", b"no-store")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def cross_site(scope: Scope) -> bool:
    """A browser says this request comes from another site's page."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site not in _SAME_SITE
    origin = _header(scope, b"origin")
    if origin is None:
        return False
    host = _header(scope, b"host")
    return origin == "null" or host is None or urlsplit(origin).netloc != host


def by_address(scope: Scope) -> bool:
    """The request names this host by an IP address or `localhost` (not by a name that some
    DNS could point anywhere)."""
    host = urlsplit("//" + (_header(scope, b"host") or "")).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def from_browser(scope: Scope) -> bool:
    return _header(scope, b"sec-fetch-site") is not None or _header(scope, b"origin") is not None


class BrowserHeaders:
    """ASGI middleware: the headers above on every answer, cross-site changes refused, and,
    on an API with no token (`open_api`), changes by a browser at a host name refused."""

    def __init__(self, app: ASGIApp, protected: str, open_api: bool = False) -> None:
        self.app = app
        self.protected = protected
        self.open_api = open_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = list(_DOCS_HEADERS if path == DOCS_PATH else _PAGE_HEADERS)
        if path.startswith(self.protected):
            extra.append(_NO_STORE)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if scope["method"] not in _SAFE_METHODS and (problem := self._refused(scope)):
            await JSONResponse({"detail": problem}, 403)(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)

    def _refused(self, scope: Scope) -> str | None:
        if cross_site(scope):
            return "a request from another site's page may not change anything here"
        if self.open_api and from_browser(scope) and not by_address(scope):
            return (
                "no API token is set, so a browser may change things here only when it "
                "reaches the service by IP address or localhost (a host name could be another "
                "site's, pointed at this device: DNS rebinding); set APP_API_TOKEN, or open "
                "the page by address"
            )
        return None
