"""A request id per HTTP request, on its log records and in its answer, and one access line.

An incoming `X-Request-ID` (a proxy's, or a client's that wants to find its request in our
logs) is kept when it is sane: 1-128 characters of letters, digits and `-_.:`; anything else
is replaced by a fresh id, so a client cannot write arbitrary text into our logs. The id is
bound for the request's records (app/observability/logs.py), echoed in the answer's
`X-Request-ID` header, and kept in the request's state for the handler of unexpected errors,
which runs outside this middleware.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import bind

HEADER = "x-request-id"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Path parameters that name an object the request is about, as the records' fields.
PATH_FIELDS = {"fine_tuning_job_id": "job_id", "webhook_id": "webhook_id", "export_id": "export_id"}

access_log = logging.getLogger("loraforge.access")


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane, else a new one (32 hex digits)."""
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            text = value.decode("latin-1")
            if SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class RequestLogMiddleware:
    """Binds the request's id for its records, answers it back, and logs one access line
    (method, path, status, duration) when the answer is complete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        with bind(request_id=request_id) as fields:
            scope.setdefault("state", {})["log_fields"] = fields
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                for name, field in PATH_FIELDS.items():
                    value = scope.get("path_params", {}).get(name)
                    if isinstance(value, str) and field not in fields:
                        fields[field] = value
                duration_ms = round((time.perf_counter() - started) * 1000, 2)
                client = scope.get("client")
                access_log.info(
                    "%s %s %d %.1f ms",
                    scope["method"],
                    scope["path"],
                    status,
                    duration_ms,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": duration_ms,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    },
                )
