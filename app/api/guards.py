"""Request guards that run before routing: URLs with control characters are refused.

No id, cursor or model name contains a control character, and PostgreSQL cannot even compare
a text column with a string holding NUL (psycopg raises before the query runs). Refusing such
URLs here, with a 400, keeps every route from having to remember it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import InvalidRequest

# C0 controls and DEL, raw or percent-encoded (the path arrives decoded, the query does not).
CONTROL_CHARACTERS = re.compile(rb"[\x00-\x1f\x7f]")


def has_control_characters(scope: Scope) -> bool:
    path = scope.get("path", "").encode("utf-8", "surrogateescape")
    query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
    return bool(CONTROL_CHARACTERS.search(path) or CONTROL_CHARACTERS.search(query))


class ControlCharacterGuard:
    """Answer 400 `invalid_url` to a request whose path or query holds a control character."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and has_control_characters(scope):
            error = InvalidRequest(
                "the URL's path or query contains a control character", code="invalid_url"
            )
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send)
            return
        await self.app(scope, receive, send)
