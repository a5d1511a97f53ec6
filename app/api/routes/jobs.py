"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events (JSON pages or
server-sent events), checkpoints and adapter downloads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import (
    AfterQuery,
    CheckpointDep,
    CurrentOrgDep,
    EnqueuerDep,
    JobDep,
    JobIdPath,
    LimitQuery,
    ReadJobDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    read_engine,
    read_sessions,
    write_session,
)
from app.api.event_stream import SSE_RESPONSE, resume_after, stream_job_events
from app.api.metadata_filter import METADATA_PARAMETER, metadata_filter
from app.api.presenters import checkpoint_public, event_page_json, job_public
from app.api.routes import ERROR_RESPONSES, TARBALL_RESPONSE, tarball
from app.config import Settings
from app.schemas.common import ListPage
from app.schemas.jobs import CheckpointPublic, EventPublic, JobCreate, JobPublic
from app.services import downloads as download_service
from app.services import events as event_service
from app.services import jobs as job_service

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Resume a stream after this event (404 when it names no event)",
    ),
]
StreamQuery = Annotated[
    bool, Query(description="Server-sent events, oldest first, until the job has ended")
]


@router.post("")
async def create_job(
    request: Request,
    body: JobCreate,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    organization_id: CurrentOrgDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobPublic:
    """Create a job; a retry with the same Idempotency-Key returns the same job."""
    async with write_session(request) as session:
        job, created = await session.run_sync(
            job_service.create_job,
            settings,
            organization_id=organization_id,
            body=body,
            idempotency_key=idempotency_key,
        )
    if created:
        # Published on the app's one publishing thread, while the response goes out: the
        # broker call can block for its connect timeout and retries, and a request that
        # waited for it would wait on that thread's turn at the GIL too. A dead broker holds
        # no thread that the other routes need, and the backoff in CeleryEnqueuer makes the
        # publishes queued behind a failed one fail at once.
        publisher: ThreadPoolExecutor = request.app.state.publisher
        factory = request.app.state.session_factory
        publisher.submit(job_service.publish_created, factory, enqueuer, job.id, job.queue)
    return job_public(job)


@router.get("", openapi_extra={"parameters": [METADATA_PARAMETER]})
async def read_jobs(
    request: Request,
    organization_id: CurrentOrgDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
) -> ListPage[JobPublic]:
    """The organization's jobs, newest first; `metadata[key]=value` filters them."""
    metadata = metadata_filter(request)
    async with read_sessions(request)() as session:
        rows, has_more = await session.run_sync(
            job_service.list_jobs, organization_id, after=after, limit=limit, metadata=metadata
        )
    return ListPage[JobPublic].of([job_public(r) for r in rows], has_more)


@router.get("/{fine_tuning_job_id}")
async def read_job(job: ReadJobDep) -> JobPublic:
    return job_public(job)


@router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(job: JobDep, session: SessionDep) -> JobPublic:
    return job_public(job_service.cancel_job(session, job))


@router.post("/{fine_tuning_job_id}/pause")
def pause_job(job: JobDep, session: SessionDep) -> JobPublic:
    return job_public(job_service.pause_job(session, job))


@router.post("/{fine_tuning_job_id}/resume")
def resume_job(
    job: JobDep, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep
) -> JobPublic:
    return job_public(job_service.resume_job(session, settings, enqueuer, job))


@router.get(
    "/{fine_tuning_job_id}/events",
    response_model=ListPage[EventPublic],
    responses={200: SSE_RESPONSE},
)
async def read_job_events(
    request: Request,
    organization_id: CurrentOrgDep,
    fine_tuning_job_id: JobIdPath,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
    stream: StreamQuery = False,
    last_event_id: LastEventIdHeader = None,
) -> Response:
    """Messages and metrics, newest first; with stream=true, server-sent events oldest first,
    resumed after Last-Event-ID (or `after`)."""
    if not stream:
        async with read_engine(request).connect() as connection:
            return await connection.run_sync(
                events_page, organization_id, fine_tuning_job_id, after, limit
            )
    after_seq = resume_after(last_event_id, after)
    async with read_sessions(request)() as session:
        job = await session.run_sync(job_service.get_job, organization_id, fine_tuning_job_id)
    # Taken here rather than as dependencies, which every page request would resolve too.
    settings: Settings = request.app.state.settings
    factory: sessionmaker[Session] = request.app.state.session_factory
    events = stream_job_events(
        request,
        factory,
        job.id,
        after_seq,
        poll_interval_s=settings.event_poll_interval_s,
        keepalive_s=settings.event_keepalive_s,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def events_page(
    connection: Connection, organization_id: str, job_id: str, after: str | None, limit: int
) -> Response:
    rows, has_more = event_service.list_events(
        connection, organization_id, job_id, after=after, limit=limit
    )
    if not rows:  # a job with no events past the cursor, or no such job: 404
        job_service.require_job(connection, organization_id, job_id)
    return Response(event_page_json(rows, has_more), media_type="application/json")


def checkpoints_page(
    session: Session, organization_id: str, job_id: str, after: str | None, limit: int
) -> ListPage[CheckpointPublic]:
    job = job_service.get_job(session, organization_id, job_id)
    rows, has_more = event_service.list_checkpoints(session, job, after=after, limit=limit)
    return ListPage[CheckpointPublic].of([checkpoint_public(r) for r in rows], has_more)


@router.get("/{fine_tuning_job_id}/checkpoints")
async def read_job_checkpoints(
    request: Request,
    organization_id: CurrentOrgDep,
    fine_tuning_job_id: JobIdPath,
    after: AfterQuery = None,
    limit: LimitQuery = 10,
) -> ListPage[CheckpointPublic]:
    """Checkpoints, newest step first."""
    async with read_sessions(request)() as session:
        return await session.run_sync(
            checkpoints_page, organization_id, fine_tuning_job_id, after, limit
        )


@router.get(
    "/{fine_tuning_job_id}/adapter", response_class=FileResponse, responses=TARBALL_RESPONSE
)
def read_job_adapter(job: JobDep, storage: StorageDep) -> Response:
    """The final PEFT adapter directory of a succeeded job."""
    return tarball(storage, download_service.job_adapter(storage, job))


@router.get(
    "/{fine_tuning_job_id}/checkpoints/{checkpoint_id}/adapter",
    response_class=FileResponse,
    responses=TARBALL_RESPONSE,
)
def read_checkpoint_adapter(checkpoint: CheckpointDep, storage: StorageDep) -> Response:
    """The PEFT adapter saved at one checkpoint, without its optimizer and RNG state."""
    return tarball(storage, download_service.checkpoint_adapter(storage, checkpoint))
