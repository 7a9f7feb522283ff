"""Who may drive the API: the holder of the bearer token (APP_API_TOKEN, or APP_API_TOKEN_FILE
read again whenever it changes, so that a mounted Secret can be rotated without a restart).

The check is FastAPI's `HTTPBearer` security dependency, so the OpenAPI document shows the
scheme; `TokenFirst` makes the same check before FastAPI reads a request's body (it reads and
parses a body before it runs any dependency), and for every path below the protected prefixes,
routed or not. Tokens are compared as SHA-256 digests with `hmac.compare_digest`: constant time,
whatever the length of what was sent. No token, wrong or right, is ever logged or echoed.
"""

import asyncio
import errno
import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from nfs_watcher_uploader.config import Settings, check_api_token
from nfs_watcher_uploader.constants import API_TOKEN_RELOAD_S, TOKEN_FILE_MAX
from nfs_watcher_uploader.nfs.reading import Unusable, read_regular

logger = logging.getLogger(__name__)

bearer = HTTPBearer(
    auto_error=False,
    description="APP_API_TOKEN (or the content of APP_API_TOKEN_FILE)",
)


class TokenFileError(Exception):
    """APP_API_TOKEN_FILE cannot be read, or holds no usable token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _read_token_file(path: Path) -> str:
    """The token in `path`, read as every file the service reads back (`nfs.reading`): a
    regular file of at most TOKEN_FILE_MAX bytes, opened without blocking (a FIFO cannot hang
    start-up or a rotation). A symbolic link is followed only within the file's own folder, as
    Kubernetes mounts a Secret (`api-token -> ..data/api-token`); one leading elsewhere is
    refused."""
    try:
        raw = read_regular(_within_its_folder(path), TOKEN_FILE_MAX)
        if raw is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return check_api_token(raw.decode("utf-8"))
    except UnicodeDecodeError:  # its message would quote a byte of the file
        raise TokenFileError(f"APP_API_TOKEN_FILE {path}: not UTF-8 text") from None
    except (OSError, ValueError) as exc:  # Unusable is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenFileError(f"APP_API_TOKEN_FILE {path}: {reason}") from None


def _within_its_folder(path: Path) -> str:
    """Where `path` leads, when that is inside its own folder (links within it followed)."""
    folder = os.path.realpath(path.parent)
    target = os.path.realpath(path)
    if os.path.commonpath([folder, target]) != folder:
        raise Unusable(f"a symbolic link to {target}, outside its folder {folder}")
    return target


class ApiToken:
    """The token the API accepts now."""

    def __init__(self, token: SecretStr, path: Path | None = None) -> None:
        self._digest = _digest(token.get_secret_value())
        self.path = path
        self.reloads = 0
        self._unusable = False  # the file was unusable at the last read (warned once)

    def __repr__(self) -> str:
        source = f"APP_API_TOKEN_FILE={self.path}" if self.path else "APP_API_TOKEN"
        return f"ApiToken(source={source} reloads={self.reloads})"

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiToken | None":
        """The configured token, or None (the API is open). Raises TokenFileError when the file
        is unusable: a service that was asked for a token must never start without one."""
        if settings.api_token is not None:
            return cls(settings.api_token)
        if settings.api_token_file is not None:
            path = settings.api_token_file
            return cls(SecretStr(_read_token_file(path)), path)
        return None

    def accepts(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(_digest(presented), self._digest)

    async def run(self) -> None:
        """Read the file again every API_TOKEN_RELOAD_S (until cancelled)."""
        while True:
            await asyncio.sleep(API_TOKEN_RELOAD_S)
            try:
                await self.reload_once()
            except Exception:  # a bug must not end rotation: the token in force stays
                logger.exception("Reading APP_API_TOKEN_FILE failed")

    async def reload_once(self) -> None:
        """Take the file's token if it changed. An unreadable or unusable file keeps the token
        in force (a Secret being swapped, a bad edit): the API is never opened by accident."""
        if self.path is None:
            return
        path = self.path
        try:
            token = await anyio.to_thread.run_sync(_read_token_file, path)
        except TokenFileError as exc:
            if not self._unusable:
                logger.warning("%s; the API keeps the token it had", exc)
            self._unusable = True
            return
        self._unusable = False
        digest = _digest(token)
        if not hmac.compare_digest(digest, self._digest):
            self._digest = digest
            self.reloads += 1
            logger.info("API token changed in %s; the new one is in force", path)


def refusal(token: ApiToken, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """Why a request with these credentials is refused, or None when it may pass."""
    if credentials is None:
        return "this endpoint needs the API token: send 'Authorization: Bearer <token>'"
    if not token.accepts(credentials.credentials):
        return "the bearer token is not the API token"
    return None


def _challenge(credentials: HTTPAuthorizationCredentials | None) -> dict[str, str]:
    # RFC 6750 section 3: no error code when no credentials were sent.
    value = "Bearer" if credentials is None else 'Bearer error="invalid_token"'
    return {"WWW-Authenticate": value}


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """The security dependency of every protected route."""
    if (why := refusal(request.app.state.api_token, credentials)) is not None:
        raise HTTPException(401, why, headers=_challenge(credentials))


class TokenFirst:
    """ASGI middleware: refuses a request to a protected path that lacks the token before the
    app sees it (before its body is read, and before routing: unknown paths get 401 too)."""

    def __init__(self, app: ASGIApp, token: ApiToken, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.token = token
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            credentials = await bearer(Request(scope))
            if (why := refusal(self.token, credentials)) is not None:
                response = JSONResponse({"detail": why}, 401, headers=_challenge(credentials))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
