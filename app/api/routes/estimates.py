"""/v1/fine_tuning/estimates: a job's memory estimate and queue, before creating it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentOrgDep, SessionDep, SettingsDep
from app.api.routes import ERROR_RESPONSES
from app.schemas.estimates import EstimatePublic
from app.schemas.jobs import JobCreate
from app.services import estimates as estimate_service

router = APIRouter(
    prefix="/v1/fine_tuning/estimates", tags=["fine-tuning"], responses=ERROR_RESPONSES
)


@router.post("")
def create_estimate(
    body: JobCreate, session: SessionDep, settings: SettingsDep, organization_id: CurrentOrgDep
) -> EstimatePublic:
    """Validate a job request as creation does and estimate its accelerator memory by part,
    with the queue it would be routed to; nothing is created or enqueued."""
    return estimate_service.estimate_job(
        session, settings, organization_id=organization_id, body=body
    )
