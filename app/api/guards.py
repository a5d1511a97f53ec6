"""Request guards that run before routing: URLs with control characters are refused.

No id, cursor or model name contains a control character, and PostgreSQL cannot even compare
a text column with a string holding NUL (psycopg raises before the query runs). Refusing such
URLs here keeps every route from having to remember it: a path holding one names nothing
(404, as any unknown id is answered), a query holding one is a malformed request (400; the
schema's patterns on free-text query parameters say so).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ApiError, InvalidRequest, NotFound

# C0 controls and DEL, raw or percent-encoded (the path arrives decoded, the query does not).
CONTROL_CHARACTERS = re.compile(rb"[\x00-\x1f\x7f]")


def refusal(scope: Scope) -> ApiError | None:
    """The error for a path or query with a control character, or None."""
    path = scope.get("path", "").encode("utf-8", "surrogateescape")
    if CONTROL_CHARACTERS.search(path):
        return NotFound("no such object: the URL's path contains a control character")
    query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
    if CONTROL_CHARACTERS.search(query):
        return InvalidRequest("the URL's query contains a control character", code="invalid_url")
    return None


class ControlCharacterGuard:
    """Answer a request whose path or query holds a control character before routing it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = refusal(scope) if scope["type"] == "http" else None
        if error is not None:
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send)
            return
        await self.app(scope, receive, send)
