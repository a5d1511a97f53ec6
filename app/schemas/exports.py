"""Merged-model exports of a fine-tuned job (a loraforge extension of OpenAI's API)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.schemas.jobs import JobError
from app.schemas.spec import StrictModel

ExportType = Literal["merged"]
ExportDtype = Literal["bfloat16", "float16", "float32"]
ExportStatus = Literal["queued", "running", "succeeded", "failed"]


class ExportCreate(StrictModel):
    """`merged`: the adapter folded into a 16-bit (or fp32) copy of the base model."""

    type: ExportType
    dtype: ExportDtype = "bfloat16"


class ExportPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    created_at: int
    finished_at: int | None
    fine_tuning_job_id: str
    type: ExportType
    dtype: ExportDtype
    status: ExportStatus
    error: JobError | None
    # What the worker measured: max_abs_logit_diff against base + adapter, bytes, files.
    details: dict[str, Any] | None
