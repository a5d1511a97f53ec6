"""The dashboard: the static single-page app in app/web, at /ui/ (and / redirects there).

The page talks to /v1 with the API key the user signs in with; the key stays in the
browser's sessionStorage. The assets are served with a strict Content-Security-Policy:
scripts, styles and connections only from this origin.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.exceptions import HTTPException

from app.api.object_response import LocalFileResponse
from app.web import WEB_DIR

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(html|js|css|svg)$")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (ETag/Last-Modified make that cheap): an upgrade shows at once.
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> FileResponse:
    match = ASSET_NAME.match(name)
    path = WEB_DIR / name
    if match is None or not path.is_file():
        raise HTTPException(404, f"no dashboard asset {name!r}")
    return LocalFileResponse(path, media_type=MEDIA_TYPES[match.group(1)], headers=SECURITY_HEADERS)


@router.get("/")
def read_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def read_ui_bare() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.api_route("/ui/", methods=["GET", "HEAD"])
def read_dashboard() -> FileResponse:
    """The dashboard's page; views are chosen by the URL fragment (#/jobs, #/files...)."""
    return _asset("index.html")


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
def read_dashboard_asset(name: str) -> FileResponse:
    return _asset(name)
