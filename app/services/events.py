"""Job events (messages and metrics) and checkpoints: written by the worker, read by the API."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Insert, Row, Select, bindparam, insert, select
from sqlalchemy.orm import Session

from app.db.models import Checkpoint, Job, JobEvent
from app.errors import CheckpointNotFound, CursorNotFound

EVENT_PREFIX = "ftevent-"


def event_id(seq: int) -> str:
    return f"{EVENT_PREFIX}{seq}"


def parse_event_id(value: str, param: str = "after") -> int:
    """The seq of an event id; CursorNotFound (naming `param`) for a value that names none."""
    digits = value.removeprefix(EVENT_PREFIX)
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise CursorNotFound(f"{value!r} names no event", param=param)
    return int(digits)


def add_event(
    session: Session,
    job: Job,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Add an event to the session (the caller commits, batching metrics as it sees fit)."""
    event = JobEvent(
        job_id=job.id,
        organization_id=job.organization_id,
        type=type,
        level=level,
        message=message,
        data=data,
    )
    session.add(event)
    return event


@cache
def _event_insert() -> Insert:
    return insert(JobEvent)


def insert_messages(session: Session, job: Job, messages: list[str]) -> None:
    """INSERT info messages on a job already inserted, now, in one round trip.

    On the session's connection, as Core: the ORM's bulk INSERT path, for the two messages of
    a new job, cost POST job 0.56M of its 6.7M instructions, and no ORM object is needed.
    """
    rows = [
        {
            "job_id": job.id,
            "organization_id": job.organization_id,
            "type": "message",
            "level": "info",
            "message": message,
            "data": None,
        }
        for message in messages
    ]
    session.connection().execute(_event_insert(), rows)


# What a page of events presents: plain rows (a fraction of an ORM object's cost to load).
EVENT_COLUMNS = (
    JobEvent.seq,
    JobEvent.created_at,
    JobEvent.level,
    JobEvent.message,
    JobEvent.type,
    JobEvent.data,
)


def list_events(
    session: Session | Connection,
    organization_id: str,
    job_id: str,
    *,
    after: str | None,
    limit: int,
) -> tuple[list[Row[Any]], bool]:
    """Newest first, as OpenAI lists them; `after` is the last event id of the previous page.

    Only the tenant's events: no rows for another organization's job (the caller tells a
    missing job from an empty page only when there are no rows).
    """
    before = parse_event_id(after) if after else None
    params = {"job_id": job_id, "organization_id": organization_id, "rows": limit + 1}
    if before is not None:
        params["before"] = before
    rows = list(session.execute(_event_page(paged=before is not None), params))
    return rows[:limit], len(rows) > limit


@cache
def _event_page(*, paged: bool) -> Select[Any]:
    """Built once (a page after a cursor, or the first page): then only bound and executed."""
    stmt = select(*EVENT_COLUMNS).where(
        JobEvent.job_id == bindparam("job_id"),
        JobEvent.organization_id == bindparam("organization_id"),
    )
    if paged:
        stmt = stmt.where(JobEvent.seq < bindparam("before"))
    return stmt.order_by(JobEvent.seq.desc()).limit(bindparam("rows"))


def list_events_since(session: Session, job: Job, after_seq: int, limit: int) -> list[JobEvent]:
    """Oldest first from `after_seq`: what a stream resumed with Last-Event-ID needs."""
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def list_checkpoints(
    session: Session, job: Job, *, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    """Newest step first; `after` is the last checkpoint id of the previous page."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        anchor = session.scalar(
            select(Checkpoint.step_number).where(
                Checkpoint.id == after, Checkpoint.job_id == job.id
            )
        )
        if anchor is None:
            raise CursorNotFound(f"no checkpoint {after!r} on this job")
        stmt = stmt.where(Checkpoint.step_number < anchor)
    rows = list(session.scalars(stmt.order_by(Checkpoint.step_number.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_checkpoint(session: Session, job: Job, checkpoint_id: str) -> Checkpoint:
    """One of the job's checkpoints, or 404 (another job's or tenant's id included)."""
    checkpoint = session.scalar(
        select(Checkpoint).where(
            Checkpoint.id == checkpoint_id,
            Checkpoint.job_id == job.id,
            Checkpoint.organization_id == job.organization_id,
        )
    )
    if checkpoint is None:
        raise CheckpointNotFound(
            f"no checkpoint {checkpoint_id!r} on job {job.id!r}", param="checkpoint_id"
        )
    return checkpoint
