"""Rows -> public objects. Storage keys, lease owners and key hashes never leave here."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Row

from app.db.base import unix
from app.db.models import Checkpoint, Export, File, Job, JobEvent, Upload, UploadPart
from app.schemas.exports import ExportPublic
from app.schemas.files import DatasetStatsPublic, FilePublic
from app.schemas.jobs import (
    CheckpointMetrics,
    CheckpointPublic,
    DpoHyperparametersPublic,
    DpoPublic,
    EventPublic,
    JobError,
    JobPublic,
    MethodPublic,
    SupervisedHyperparametersPublic,
    SupervisedPublic,
    hyperparameters_public,
)
from app.schemas.spec import ResolvedSpec
from app.schemas.uploads import UploadPartPublic, UploadPublic
from app.services.events import event_id
from app.services.uploads import status_of


def file_fields(record: File | Row[Any]) -> dict[str, Any]:
    """A file object's fields, from its ORM object or a row of FILE_COLUMNS."""
    stats = record.stats
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": unix(record.created_at) or 0,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": unix(record.expires_at),
        "sha256": record.sha256,
        "stats": {key: stats.get(key, default) for key, default in STATS_FIELDS} if stats else None,
    }


# (name, value for a file validated before the field existed)
STATS_FIELDS = tuple(
    (name, None if info.is_required() else info.default)
    for name, info in DatasetStatsPublic.model_fields.items()
)


def file_public(record: File | Row[Any]) -> FilePublic:
    return FilePublic.model_validate(file_fields(record))


def file_page_json(rows: list[Row[Any]], has_more: bool) -> bytes:
    """The JSON of `ListPage[FilePublic]` built without models: a page may hold 10,000 files
    (OpenAI's largest), and validating a model for each costs more than the query."""
    files = [file_fields(row) for row in rows]
    first_id, last_id = (files[0]["id"], files[-1]["id"]) if files else (None, None)
    page = {
        "object": "list",
        "data": files,
        "has_more": has_more,
        "first_id": first_id,
        "last_id": last_id,
    }
    return orjson.dumps(page)


def upload_public(upload: Upload, file: File | None = None) -> UploadPublic:
    return UploadPublic(
        id=upload.id,
        bytes=upload.bytes,
        created_at=unix(upload.created_at) or 0,
        expires_at=unix(upload.expires_at) or 0,
        filename=upload.filename,
        purpose=upload.purpose,
        status=status_of(upload.status, upload.expires_at),  # type: ignore[arg-type]
        file=file_public(file) if file is not None else None,
    )


def upload_part_public(part: UploadPart) -> UploadPartPublic:
    return UploadPartPublic(
        id=part.id, created_at=unix(part.created_at) or 0, upload_id=part.upload_id
    )


def method_public(
    hyperparameters: DpoHyperparametersPublic | SupervisedHyperparametersPublic,
) -> MethodPublic:
    """OpenAI's `method` of a job: its type and, under that type, its hyperparameters."""
    if isinstance(hyperparameters, DpoHyperparametersPublic):
        return MethodPublic(type="dpo", dpo=DpoPublic(hyperparameters=hyperparameters))
    return MethodPublic(supervised=SupervisedPublic(hyperparameters=hyperparameters))


def job_public(job: Job | Row[Any]) -> JobPublic:
    """A job from its ORM object or from a row of `get_job_row`."""
    spec = ResolvedSpec.model_validate(job.spec)
    hyperparameters = hyperparameters_public(spec)
    return JobPublic(
        id=job.id,
        created_at=unix(job.created_at) or 0,
        error=JobError.model_validate(job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=unix(job.finished_at),
        hyperparameters=hyperparameters,
        method=method_public(hyperparameters),
        # what the job was asked to continue, as OpenAI shows it; job.model is its base
        model=spec.parent.model if spec.parent else job.model,
        organization_id=job.organization_id,
        result_files=list(job.result_files or []),
        seed=job.seed,
        status=job.status,  # type: ignore[arg-type]
        trained_tokens=job.trained_tokens,
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        estimated_finish=unix(job.estimated_finish),
        metadata=job.metadata_,
        integrations=job.integrations or [],
        suffix=job.suffix,
        lora=spec.lora,
        quantization=spec.quantization,
        training=spec.training,
        attempt=job.attempt,
        cancel_requested=job.cancel_requested,
        pause_requested=job.pause_requested,
    )


def event_public(event: JobEvent | Row[Any]) -> EventPublic:
    """An event from its ORM object or from a row of `EVENT_COLUMNS`."""
    return EventPublic(
        id=event_id(event.seq),
        created_at=unix(event.created_at) or 0,
        level=event.level,  # type: ignore[arg-type]
        message=event.message,
        type=event.type,  # type: ignore[arg-type]
        data=event.data,
    )


def event_page_json(rows: list[Row[Any]], has_more: bool) -> bytes:
    """The JSON of `ListPage[EventPublic]` for rows of `EVENT_COLUMNS`, built without models.

    Byte for byte what the models would give (a test holds them equal), for the busiest list
    route: validating twenty models and a page, then serializing them, was about a quarter of
    the instructions its requests cost (bench/api_instructions.py).
    """
    events = [
        {
            "id": event_id(seq),
            "object": "fine_tuning.job.event",
            "created_at": unix(created_at) or 0,
            "level": level,
            "message": message,
            "type": type_,
            "data": data,
        }
        for seq, created_at, level, message, type_, data in map(tuple, rows)
    ]
    first_id, last_id = (events[0]["id"], events[-1]["id"]) if events else (None, None)
    page = {
        "object": "list",
        "data": events,
        "has_more": has_more,
        "first_id": first_id,
        "last_id": last_id,
    }
    return orjson.dumps(page)


def checkpoint_public(checkpoint: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        id=checkpoint.id,
        created_at=unix(checkpoint.created_at) or 0,
        fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
        fine_tuning_job_id=checkpoint.job_id,
        metrics=CheckpointMetrics.model_validate(checkpoint.metrics or {}),
        step_number=checkpoint.step_number,
    )


def export_public(export: Export) -> ExportPublic:
    return ExportPublic(
        id=export.id,
        created_at=unix(export.created_at) or 0,
        finished_at=unix(export.finished_at),
        fine_tuning_job_id=export.job_id,
        type=export.type,  # type: ignore[arg-type]
        dtype=export.dtype,  # type: ignore[arg-type]
        status=export.status,  # type: ignore[arg-type]
        error=JobError.model_validate(export.error) if export.error else None,
        details=export.details,
    )
