"""Structured logs: one JSON object per line, or a human-readable line on a terminal.

Every record carries the fields bound for the work at hand (`request_id` and `organization`
for an HTTP request, `job_id`, `organization` and `attempt` for a job's worker): they live in
a context variable, so a record gets them wherever it is logged from inside that work, in
our code or in a library's. `configure_logging` installs one handler on the root logger for
the API, the workers (Celery's own loggers included: they propagate to the root) and the
inference server.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any, Literal

LogFormat = Literal["auto", "json", "text"]
# The fields a record may carry from its context, in the order lines show them.
CONTEXT_FIELDS = ("request_id", "organization", "job_id", "attempt", "export_id", "webhook_id")

# One dict per unit of work (a request, a task). `annotate` adds to the current one in place,
# so what a request's dependency learns (its organization) reaches its later records, in the
# event loop and in the thread pool alike (both see the same dict).
_context: ContextVar[dict[str, Any] | None] = ContextVar("loraforge_log_context", default=None)

# Everything a LogRecord has of its own; any other attribute came from `extra=` (but
# uvicorn's color_message, the message again with terminal colours).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
    *CONTEXT_FIELDS,
}


@contextmanager
def bind(**fields: Any) -> Iterator[dict[str, Any]]:
    """Records logged inside the block carry `fields` (on top of those bound outside it)."""
    current = _context.get()
    bound = {**(current or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(bound)
    try:
        yield bound
    finally:
        _context.reset(token)


def annotate(**fields: Any) -> None:
    """Add fields to the work bound now (no-op outside `bind`)."""
    current = _context.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def context_fields() -> dict[str, Any]:
    """The fields bound now."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field set by `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC), level, logger, message, the
    bound fields, `extra=` fields, and the traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`15:04:05.123 INFO  logger: message [job_id=… attempt=1]`, for people at a terminal."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(fields)}]{newline}{rest}"


def resolve_format(log_format: LogFormat, stream: IO[str]) -> Literal["json", "text"]:
    """`auto`: text on a terminal, JSON anywhere else (a pipe, a file, a container's log)."""
    if log_format != "auto":
        return log_format
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


class LoraforgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `configure_logging` installs (and replaces when called again)."""


def configure_logging(
    log_format: LogFormat = "auto", level: str | int = "INFO", stream: IO[str] | None = None
) -> Literal["json", "text"]:
    """Send every record, from any logger, to `stream` (stdout) in one format; returns it."""
    stream = stream or sys.stdout
    handler = LoraforgeHandler(stream)
    handler.addFilter(ContextFilter())
    chosen = resolve_format(log_format, stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, LoraforgeHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries' warnings.warn() become records too, instead of raw lines on stderr.
    logging.captureWarnings(True)
    # uvicorn's loggers log through the root handler only; its access lines not at all (our
    # servers write their own, with the request's id: app/observability/requests.py).
    for name, propagate in (("uvicorn", True), ("uvicorn.error", True), ("uvicorn.access", False)):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = propagate
    return chosen
