"""Routers, one module per resource."""

from __future__ import annotations

from typing import Any

from fastapi.responses import FileResponse

from app.api.object_response import ObjectResponse, stored_response
from app.schemas.common import ErrorResponse
from app.services.downloads import Download
from app.storage import Storage

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing, invalid or revoked API key"),
        (404, "No such object for this organization"),
        (409, "The object's state does not allow this"),
        (413, "Upload over the size limit"),
        (422, "Request validation failed"),
        (429, "Rate limit (Retry-After says when to retry) or organization quota exceeded"),
    )
}

TARBALL_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A .tar.gz, streamed (Range requests supported)",
        "content": {"application/gzip": {}},
    },
    416: {"model": ErrorResponse, "description": "The Range starts past the end"},
}


def tarball(storage: Storage, download: Download) -> FileResponse | ObjectResponse:
    """Serve a built archive as an attachment, streamed, answering Range requests."""
    return stored_response(
        storage, download.key, media_type="application/gzip", filename=download.filename
    )
