"""The status page at `/`, its static files, and the API docs at `/docs`, all served from the
package (no CDN: the device may be offline).

The page itself needs no token: it is the same for everyone and holds no data, except the
liveness and readiness the open probes tell anyway. Its data comes from the API, with the token
the operator types into its sign-in form (kept in the tab's sessionStorage, sent as a bearer
header: no cookie, so no request another site's page makes carries it). `static/status.js`
builds every row with `textContent`, never markup from data: file names come from whoever
writes the share. Swagger UI's assets are those of the `fastapi-offline` package.
"""

import html
from pathlib import Path
from string import Template
from typing import Annotated

import fastapi_offline
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from nfs_watcher_uploader.service import Service

# How often the page asks the API (milliseconds); it waits for each answer before the next.
REFRESH_MS = 1000

_OWN = Path(__file__).parent / "static"
_SWAGGER = Path(fastapi_offline.__file__).parent / "static"
# Every file /static/ serves, by name: nothing else on disk is reachable through it.
STATIC: dict[str, tuple[Path, str]] = {
    "status.js": (_OWN / "status.js", "text/javascript; charset=utf-8"),
    "status.css": (_OWN / "status.css", "text/css; charset=utf-8"),
    "docs.js": (_OWN / "docs.js", "text/javascript; charset=utf-8"),
    "swagger-ui-bundle.js": (_SWAGGER / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": (_SWAGGER / "swagger-ui.css", "text/css; charset=utf-8"),
}

router = APIRouter(include_in_schema=False)


def _service(request: Request) -> Service:
    return request.app.state.service


def _template(name: str) -> Template:
    return Template((_OWN / name).read_text(encoding="utf-8"))


_PAGE = _template("status.html")
_DOCS = _template("docs.html")


@router.get("/")
async def status_page(
    request: Request, service: Annotated[Service, Depends(_service)]
) -> HTMLResponse:
    """The page, with what the open probes say filled in (the rest comes from the API)."""
    problem = service.liveness()
    values = {
        "health": "healthy" if problem is None else f"unhealthy: {problem}",
        "health_class": "ok" if problem is None else "bad",
        "ready": "ready" if service.ready else f"not ready: {service.phase}",
        "ready_class": "ok" if service.ready else "warn",
        "token_required": "true" if request.app.state.api_token is not None else "false",
        "refresh_ms": str(REFRESH_MS),
    }
    return HTMLResponse(_PAGE.substitute({k: html.escape(v) for k, v in values.items()}))


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(_DOCS.substitute())


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    found = STATIC.get(name)
    if found is None:
        raise HTTPException(404, "no such file")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
