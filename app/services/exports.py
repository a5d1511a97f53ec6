"""Merged exports: create (commit, then enqueue by task name), publish, read, list, content."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import new_id, utcnow
from app.db.models import Export, Job
from app.errors import ArtifactNotFound, ExportNotFound, InvalidExportState, InvalidJobState
from app.queue import TASK_RUN_EXPORT, Enqueuer, try_send
from app.schemas.exports import ExportCreate
from app.services.archives import SourceMissing, cached_tar_gz
from app.services.downloads import Download
from app.services.pagination import page_by_created
from app.services.transitions import compare_and_set
from app.storage import Storage

# Merged weights are mostly incompressible; the fastest level keeps the first download short.
EXPORT_COMPRESSLEVEL = 1


def export_key(export_id: str) -> str:
    return f"exports/{export_id}"


def create_export(
    session: Session, settings: Settings, enqueuer: Enqueuer, job: Job, body: ExportCreate
) -> Export:
    """Record a queued export of a succeeded job, commit, then ring the export queue's bell."""
    if job.status != "succeeded":
        raise InvalidJobState(
            f"only a succeeded job can be exported; this job is {job.status}",
            param="fine_tuning_job_id",
        )
    export_id = new_id("ftexp")
    export = Export(
        id=export_id,
        job_id=job.id,
        organization_id=job.organization_id,
        type=body.type,
        dtype=body.dtype,
        status="queued",
        storage_key=export_key(export_id),
        # Written with the export, which is published right after; a failed publish clears it
        # for the reaper's next pass, and a process lost in between leaves the export to the
        # reaper after requeue_after_s.
        enqueued_at=utcnow(),
    )
    session.add(export)
    session.commit()
    if not try_send(enqueuer, TASK_RUN_EXPORT, [export_id], settings.export_queue):
        compare_and_set(
            session, export_id, from_statuses={"queued"}, table=Export, enqueued_at=None
        )
        session.commit()
    session.refresh(export)
    return export


def publish_export(
    session: Session, settings: Settings, enqueuer: Enqueuer, export: Export
) -> bool:
    """Ring the export queue's bell for a committed queued export; record when it was sent."""
    if not try_send(enqueuer, TASK_RUN_EXPORT, [export.id], settings.export_queue):
        return False
    compare_and_set(
        session, export.id, from_statuses={"queued"}, table=Export, enqueued_at=utcnow()
    )
    session.commit()
    return True


def get_export(session: Session, job: Job, export_id: str) -> Export:
    """One of the job's exports, or 404 (another job's or tenant's id included)."""
    export = session.scalar(
        select(Export).where(
            Export.id == export_id,
            Export.job_id == job.id,
            Export.organization_id == job.organization_id,
        )
    )
    if export is None:
        raise ExportNotFound(f"no export {export_id!r} on job {job.id!r}", param="export_id")
    return export


def list_exports(
    session: Session, job: Job, *, after: str | None, limit: int
) -> tuple[list[Export], bool]:
    """The job's exports, newest first."""
    stmt = select(Export).where(
        Export.job_id == job.id, Export.organization_id == job.organization_id
    )
    return page_by_created(
        session, Export, stmt, organization_id=job.organization_id, after=after, limit=limit
    )


def export_content(storage: Storage, export: Export) -> Download:
    """The merged model directory of a succeeded export, as a cached .tar.gz."""
    if export.status != "succeeded":
        raise InvalidExportState(
            f"the export's content is available once it has succeeded; it is {export.status}",
            param="export_id",
        )
    source = export.storage_key or export_key(export.id)
    name = f"{export.id}-{export.type}-{export.dtype}"
    try:
        key = cached_tar_gz(
            storage, source, f"{source}.tar.gz", top=name, compresslevel=EXPORT_COMPRESSLEVEL
        )
    except SourceMissing as exc:
        raise ArtifactNotFound(f"export {export.id!r} has no files", param="export_id") from exc
    return Download(key, f"{name}.tar.gz")
