"""/v1/models: the base-model catalog plus the organization's fine-tuned models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import CurrentOrgDep, SessionDep, SettingsDep
from app.api.routes import ERROR_RESPONSES
from app.schemas.common import DeletedObject, ErrorResponse, ListPage
from app.schemas.models import ModelPublic
from app.services import models as model_service

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("")
def read_models(
    session: SessionDep, settings: SettingsDep, organization_id: CurrentOrgDep
) -> ListPage[ModelPublic]:
    return ListPage[ModelPublic].of(
        model_service.list_models(session, settings, organization_id), has_more=False
    )


# Model ids contain slashes ("loraforge/tiny-random-llama"), hence the path converter.
ModelPath = Annotated[
    str,
    Path(
        max_length=255,
        description="A catalog model or a fine-tuned one (`ft:...`); may contain slashes",
        examples=["loraforge/tiny-random-llama"],
    ),
]


@router.get("/{model:path}")
def read_model(
    model: ModelPath, session: SessionDep, settings: SettingsDep, organization_id: CurrentOrgDep
) -> ModelPublic:
    return model_service.get_model(session, settings, organization_id, model)


@router.delete(
    "/{model:path}",
    responses={403: {"model": ErrorResponse, "description": "A base model: not deletable"}},
)
def delete_model(
    model: ModelPath, session: SessionDep, settings: SettingsDep, organization_id: CurrentOrgDep
) -> DeletedObject:
    model_service.delete_model(session, settings, organization_id, model)
    return DeletedObject(id=model, object="model", deleted=True)
