"""/v1/fine_tuning/jobs/{id}/exports: merged-model exports built by a worker; create, list,
retrieve, download."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from app.api.deps import (
    AfterQuery,
    EnqueuerDep,
    ExportDep,
    JobDep,
    LimitQuery,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.api.presenters import export_public
from app.api.routes import ERROR_RESPONSES, TARBALL_RESPONSE, tarball
from app.schemas.common import ListPage
from app.schemas.exports import ExportCreate, ExportPublic
from app.services import exports as export_service

router = APIRouter(
    prefix="/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports",
    tags=["fine-tuning"],
    responses=ERROR_RESPONSES,
)


@router.post("")
def create_export(
    body: ExportCreate,
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
) -> ExportPublic:
    """Queue a merged export of a succeeded job; a worker builds it."""
    return export_public(export_service.create_export(session, settings, enqueuer, job, body))


@router.get("")
def read_exports(
    job: JobDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListPage[ExportPublic]:
    """The job's exports, newest first."""
    rows, has_more = export_service.list_exports(session, job, after=after, limit=limit)
    return ListPage[ExportPublic].of([export_public(r) for r in rows], has_more)


@router.get("/{export_id}")
async def read_export(export: ExportDep) -> ExportPublic:
    return export_public(export)


@router.get("/{export_id}/content", response_class=FileResponse, responses=TARBALL_RESPONSE)
def read_export_content(export: ExportDep, storage: StorageDep) -> Response:
    """The merged model directory of a succeeded export."""
    return tarball(storage, export_service.export_content(storage, export))
