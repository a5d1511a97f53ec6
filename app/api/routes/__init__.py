"""Routers, one module per resource."""

from __future__ import annotations

from typing import Any

from app.schemas.common import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing, invalid or revoked API key"),
        (404, "No such object for this organization"),
        (409, "The object's state does not allow this"),
        (413, "Upload over the size limit"),
        (422, "Request validation failed"),
    )
}
