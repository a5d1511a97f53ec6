"""Routers, one module per resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.responses import FileResponse

from app.api.object_response import ObjectResponse, stored_response
from app.errors import InsufficientStorage
from app.schemas.common import ErrorResponse
from app.services.downloads import Download
from app.storage import Storage, is_disk_full

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request: the body, a parameter or a header fails its schema or a rule"),
        (401, "Missing, invalid or revoked API key"),
        (404, "No such object for this organization (an `after` cursor included)"),
        (409, "The object's state does not allow this"),
        (413, "Upload over the size limit"),
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


@contextmanager
def disk_full_refused(param: str) -> Iterator[None]:
    """A full disk while receiving or storing an upload is a 507 that names it, not a 500."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise InsufficientStorage(
                "the server's disk is full; nothing was kept. Try again later", param=param
            ) from error
        raise
