"""Tracking integrations on job creation, in OpenAI's shape (`{"type": "wandb", "wandb":
{...}}`), plus MLflow. The tenant names a project or experiment; the tracking server and its
credentials are the operator's settings, never a URL from the request."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from app.schemas.spec import StrictModel

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class WandbOptions(StrictModel):
    project: Name
    name: Name | None = None
    entity: Name | None = None
    tags: Annotated[list[Tag], Field(max_length=32)] | None = None


class WandbIntegration(StrictModel):
    type: Literal["wandb"]
    wandb: WandbOptions


class MlflowOptions(StrictModel):
    experiment: Name
    run_name: Name | None = None
    tags: (
        Annotated[dict[Tag, Annotated[str, Field(max_length=512)]], Field(max_length=32)] | None
    ) = None


class MlflowIntegration(StrictModel):
    type: Literal["mlflow"]
    mlflow: MlflowOptions


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]
