"""Dependencies: settings, sessions, storage, enqueue, the caller's organization, loaded rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.api.keycache import KeyCache, Principal
from app.api.ratelimit import RateLimiter
from app.config import Settings
from app.db.models import Checkpoint, Export, File, Job
from app.errors import Unauthenticated
from app.observability.logs import annotate
from app.queue import Enqueuer
from app.schemas.common import NO_CONTROL_CHARACTERS
from app.services import events as event_service
from app.services import exports as export_service
from app.services import files as file_service
from app.services import jobs as job_service
from app.services import uploads as upload_service
from app.services.keys import authenticate, hash_key
from app.storage import Storage

MAX_PAGE_SIZE = 100

# FastAPI runs a plain `def` dependency in the thread pool: a hop of its own for each one on
# each request. Those that only read app.state are `async def` (no I/O), the writing session
# is opened without I/O and closed in one hop, and routes that only present loaded rows are
# `async def` too. Writes run in the thread pool; reads run on the event loop, through the
# read engine (app/db/session.py).


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for the request; it connects on first use, in whichever thread runs that.

    It is closed on the event loop, without waiting for a thread: a transaction left open
    (the handler raised) may hold a row lock, and other requests may be waiting for that
    lock in every thread of the pool. Its rollback is one short round trip.
    """
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def read_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads, on the event loop: `await session.run_sync(service, ...)`.

    A plain function, not a dependency, for the same reason as ApiKeyAuth: the routes that
    use it are the busiest, and each dependency is resolved anew for every request.
    """
    factory: async_sessionmaker[AsyncSession] = request.app.state.read_session_factory
    return factory


def read_engine(request: Request) -> AsyncEngine:
    """The read sessions' engine, for reads of plain rows: `connection.run_sync(service, ...)`."""
    engine: AsyncEngine = request.app.state.async_engine
    return engine


@asynccontextmanager
async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session that writes on the event loop, in transactions (creating a job). It keeps one
    connection for the request: its isolation level is then set once, not at every commit."""
    engine: AsyncEngine = request.app.state.write_engine
    async with (
        engine.connect() as connection,
        AsyncSession(connection, expire_on_commit=False) as session,
    ):
        yield session


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# Closed when the handler returns, before the body is sent: a slow reader of a download must
# not hold a pooled connection (a few dozen of them would stall every other request).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[Storage, Depends(get_storage)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


class ApiKeyAuth(SecurityBase):
    """The organization of a live API key (`Authorization: Bearer <key>`), or 401; 429 past
    the key's rate limit.

    One dependency that is also the OpenAPI security scheme (an HTTP bearer), rather than
    HTTPBearer plus a dependency on it: FastAPI resolves each dependency of a route on every
    request, through machinery of its own. A cached key needs no session; a key not in the
    cache is looked up in a session of its own, in the thread pool, once for all the
    requests that carry it at that moment.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description="An API key from `loraforge keys create`")
        self.scheme_name = "HTTPBearer"

    async def __call__(self, request: Request) -> str:
        scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
        if not key or scheme.lower() != "bearer":
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        cache: KeyCache = request.app.state.key_cache
        digest = hash_key(key)
        factory = request.app.state.session_factory
        principal = await cache.get_or_look_up(
            digest, lambda: run_in_threadpool(look_up_key, factory, key)
        )
        if principal is None:
            raise Unauthenticated("invalid or revoked API key")
        annotate(organization=principal.organization_id)  # on the request's log records
        limiter: RateLimiter = request.app.state.rate_limiter
        limiter.take(principal.key_id)
        return principal.organization_id


current_organization_id = ApiKeyAuth()


CurrentOrgDep = Annotated[str, Depends(current_organization_id)]


def _id_path(example: str) -> Any:
    # Ids are at most 40 characters; an id that names nothing is a 404, a longer one a 400.
    return Path(max_length=64, examples=[example])


JobIdPath = Annotated[str, _id_path("ftjob-5f1c2a9b8e7d6c5b4a392817")]
FileIdPath = Annotated[str, _id_path("file-0a1b2c3d4e5f60718293a4b5")]
CheckpointIdPath = Annotated[str, _id_path("ftckpt-9c8b7a6f5e4d3c2b1a0f9e8d")]
ExportIdPath = Annotated[str, _id_path("ftexp-1a2b3c4d5e6f708192a3b4c5")]
UploadIdPath = Annotated[str, _id_path("upload-0a1b2c3d4e5f60718293a4b5")]


def look_up_key(factory: sessionmaker[Session], key: str) -> Principal | None:
    with factory() as session:
        record = authenticate(session, key)
        if record is None:
            return None
        return Principal(key_id=record.id, organization_id=record.organization_id)


def load_job(
    session: SessionDep, organization_id: CurrentOrgDep, fine_tuning_job_id: JobIdPath
) -> Job:
    return job_service.get_job(session, organization_id, fine_tuning_job_id)


def load_file(session: SessionDep, organization_id: CurrentOrgDep, file_id: FileIdPath) -> File:
    return file_service.get_file(session, organization_id, file_id)


async def load_job_to_read(
    request: Request, organization_id: CurrentOrgDep, fine_tuning_job_id: JobIdPath
) -> Row[Any]:
    """The job, for routes that only present it: a plain row, read on the event loop."""
    async with read_engine(request).connect() as connection:
        return await connection.run_sync(
            job_service.get_job_row, organization_id, fine_tuning_job_id
        )


async def require_upload(
    request: Request, organization_id: CurrentOrgDep, upload_id: UploadIdPath
) -> str:
    """The id of one of the tenant's uploads, or 404 before the request's body is read."""
    async with read_engine(request).connect() as connection:
        await connection.run_sync(upload_service.require_upload, organization_id, upload_id)
    return upload_id


JobDep = Annotated[Job, Depends(load_job)]
UploadIdDep = Annotated[str, Depends(require_upload)]
ReadJobDep = Annotated[Row[Any], Depends(load_job_to_read)]
FileDep = Annotated[File, Depends(load_file)]


def load_checkpoint(
    session: SessionDep, job: JobDep, checkpoint_id: CheckpointIdPath
) -> Checkpoint:
    return event_service.get_checkpoint(session, job, checkpoint_id)


def load_export(session: SessionDep, job: JobDep, export_id: ExportIdPath) -> Export:
    return export_service.get_export(session, job, export_id)


CheckpointDep = Annotated[Checkpoint, Depends(load_checkpoint)]
ExportDep = Annotated[Export, Depends(load_export)]
AfterQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=NO_CONTROL_CHARACTERS,
        description="Last id of the previous page (404 when it names no object)",
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
