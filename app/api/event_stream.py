"""Server-sent events of a job's events: what is stored after a point, then new events as the
worker writes them, until the job has ended.

Each poll opens its own short session in a worker thread, so a stream that lasts hours holds
no database connection (nor, on SQLite, a read snapshot) between polls.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.api.presenters import event_public
from app.db.models import Job
from app.schemas.jobs import TERMINAL_STATUSES, EventPublic
from app.services.events import list_events_since, parse_event_id

# Events read per poll; a full batch is followed at once by the next poll.
BATCH = 200

SSE_RESPONSE: dict[str, Any] = {
    "description": (
        "With `stream=true`: server-sent events, oldest first. Each event has `id` (the event "
        "id, for Last-Event-ID), `event` (message or metrics) and `data` (the event object); "
        "`: keep-alive` comments while idle; a last `event: done` with the job's status."
    ),
    # OpenAPI 3.2's itemSchema: the shape of one event, as an SSE parser hands it over.
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "id": {"type": "string"},
                    "event": {"type": "string", "enum": ["message", "metrics", "done"]},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                },
            }
        }
    },
}


def resume_after(last_event_id: str | None, after: str | None) -> int:
    """The event seq a stream starts after: a reconnect's Last-Event-ID wins over `after`."""
    if last_event_id:
        return parse_event_id(last_event_id, "Last-Event-ID")
    return parse_event_id(after) if after else 0


@dataclass(frozen=True)
class Poll:
    events: list[EventPublic]
    last_seq: int
    status: str | None


def poll(factory: sessionmaker[Session], job_id: str, after_seq: int) -> Poll:
    """Events after `after_seq` and the job's status (None once the job row is gone)."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return Poll([], after_seq, None)
        # Status first, events second: events written before the job ended are then visible.
        status = job.status
        rows = list_events_since(session, job, after_seq, BATCH)
        last_seq = rows[-1].seq if rows else after_seq
        return Poll([event_public(row) for row in rows], last_seq, status)


def format_event(event: EventPublic) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def format_done(status: str | None) -> str:
    return f"event: done\ndata: {json.dumps({'status': status})}\n\n"


async def stream_job_events(
    request: Request,
    factory: sessionmaker[Session],
    job_id: str,
    after_seq: int,
    *,
    poll_interval_s: float,
    keepalive_s: float,
) -> AsyncIterator[str]:
    """Yield SSE frames until the job has ended and every event is sent, or the client left."""
    ended = False
    last_write = time.monotonic()
    while True:
        batch = await run_in_threadpool(poll, factory, job_id, after_seq)
        for event in batch.events:
            yield format_event(event)
        after_seq = batch.last_seq
        if batch.events:
            last_write = time.monotonic()
        if len(batch.events) == BATCH:
            continue
        # One more poll after the job is seen ending, for events committed just after it.
        if ended and not batch.events:
            yield format_done(batch.status)
            return
        ended = batch.status is None or batch.status in TERMINAL_STATUSES
        if await request.is_disconnected():
            return
        if time.monotonic() - last_write >= keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        await anyio.sleep(poll_interval_s)
