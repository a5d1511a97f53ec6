"""Models a tenant can see: the operator's catalog plus its own fine-tuned models."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import unix, utcnow
from app.db.models import Job
from app.errors import NotFound, PermissionDenied
from app.schemas.models import ModelPublic
from app.schemas.spec import ResolvedSpec

# Catalog models have no creation time of their own; report the Unix epoch consistently.
CATALOG_CREATED = 0


def _fine_tuned(session: Session, organization_id: str) -> list[Job]:
    stmt = (
        select(Job)
        .where(
            Job.organization_id == organization_id,
            Job.fine_tuned_model.is_not(None),
            Job.model_deleted_at.is_(None),
        )
        .order_by(Job.created_at)
    )
    return list(session.scalars(stmt))


def _fine_tuned_public(job: Job) -> ModelPublic:
    return ModelPublic(
        id=job.fine_tuned_model or "",
        created=unix(job.finished_at or job.created_at) or 0,
        owned_by=job.organization_id,
        kind="fine-tuned",
        parent=parent.model
        if (parent := ResolvedSpec.model_validate(job.spec).parent)
        else job.model,
    )


def list_models(session: Session, settings: Settings, organization_id: str) -> list[ModelPublic]:
    catalog = [
        ModelPublic(
            id=entry.id,
            created=CATALOG_CREATED,
            owned_by=entry.owned_by,
            kind="base",
            description=entry.description or None,
        )
        for entry in settings.catalog().values()
    ]
    return catalog + [_fine_tuned_public(job) for job in _fine_tuned(session, organization_id)]


def _fine_tuned_job(session: Session, organization_id: str, model: str) -> Job | None:
    return session.scalar(
        select(Job).where(
            Job.organization_id == organization_id,
            Job.fine_tuned_model == model,
            Job.model_deleted_at.is_(None),
        )
    )


def get_model(
    session: Session, settings: Settings, organization_id: str, model: str
) -> ModelPublic:
    entry = settings.catalog().get(model)
    if entry is not None:
        return ModelPublic(
            id=entry.id,
            created=CATALOG_CREATED,
            owned_by=entry.owned_by,
            kind="base",
            description=entry.description or None,
        )
    job = _fine_tuned_job(session, organization_id, model)
    if job is None:
        raise NotFound(f"no model {model!r}", param="model", code="model_not_found")
    return _fine_tuned_public(job)


def delete_model(session: Session, settings: Settings, organization_id: str, model: str) -> None:
    """Hide a fine-tuned model; its job and artifacts stay for the record."""
    if model in settings.catalog():
        raise PermissionDenied(
            f"{model!r} is a base model of this server's catalog; only fine-tuned models can be "
            "deleted",
            param="model",
            code="model_not_deletable",
        )
    job = _fine_tuned_job(session, organization_id, model)
    if job is None:
        raise NotFound(f"no model {model!r}", param="model", code="model_not_found")
    job.model_deleted_at = utcnow()
    session.commit()
