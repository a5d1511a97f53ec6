"""Fine-tuning a fine-tuned model: `model` names a fine_tuned_model or a checkpoint of the
caller's organization, and the new job trains that adapter further on the same base.

The parent's adapter is the new job's initial LoRA state, so its LoRA layers must be the
parent's: a request without `lora` inherits the parent's, one whose r, alpha or targets
differ is refused (400 parent_lora_mismatch); dropout may change. A request without
`quantization` inherits the parent's too. Another organization's model, a deleted one, or a
job that has not succeeded reads as any unknown model: model_not_found.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Checkpoint, Job
from app.errors import InvalidRequest, ModelNotFound
from app.schemas.jobs import JobCreate
from app.schemas.spec import LoraSpec, ParentModel, QuantizationSpec, ResolvedSpec
from app.services.downloads import checkpoint_adapter_prefix
from app.storage import Storage

# The LoRA weights in a PEFT adapter directory.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# What fixes the shape and scale of the LoRA layers the parent's weights fill.
LORA_SHAPE_FIELDS = ("r", "alpha", "target_modules")


@dataclass(frozen=True)
class Parent:
    model: ParentModel
    spec: ResolvedSpec  # the parent job's: its base, LoRA and quantization


def model_not_found(model: str) -> ModelNotFound:
    return ModelNotFound(f"model {model!r} is not in this server's catalog", param="model")


def find_parent(session: Session, organization_id: str, model: str) -> Parent:
    """The organization's succeeded fine-tuned model, or checkpoint, named `model`; or
    model_not_found."""
    job = session.scalar(
        select(Job).where(
            Job.organization_id == organization_id,
            Job.fine_tuned_model == model,
            Job.status == "succeeded",
            Job.model_deleted_at.is_(None),
        )
    )
    step = None
    if job is None:
        found = session.execute(
            select(Job, Checkpoint.step_number)
            .join(Checkpoint, Checkpoint.job_id == Job.id)
            .where(
                Checkpoint.organization_id == organization_id,
                Checkpoint.fine_tuned_model_checkpoint == model,
                Job.model_deleted_at.is_(None),
            )
        ).first()
        if found is None:
            raise model_not_found(model)
        job, step = found
    spec = ResolvedSpec.model_validate(job.spec)
    return Parent(ParentModel(model=model, job_id=job.id, step=step), spec)


def child_lora(body: JobCreate, parent: Parent) -> LoraSpec:
    """The parent's LoRA unless the request gives one, which must have the parent's shape."""
    inherited = parent.spec.lora
    if "lora" not in body.model_fields_set:
        return inherited
    for name in LORA_SHAPE_FIELDS:
        asked, had = getattr(body.lora, name), getattr(inherited, name)
        if asked != had:
            raise InvalidRequest(
                f"lora.{name} is {asked!r} but {parent.model.model!r} was trained with "
                f"{had!r}; a job that continues a fine-tuned model starts from its adapter, so "
                "r, alpha and target_modules must be the parent's (omit lora to inherit them)",
                param=f"lora.{name}",
                code="parent_lora_mismatch",
            )
    return body.lora


def child_quantization(body: JobCreate, parent: Parent) -> QuantizationSpec:
    """The parent's base quantization unless the request gives one."""
    if "quantization" not in body.model_fields_set:
        return parent.spec.quantization
    return body.quantization


def parent_adapter_key(session: Session, storage: Storage, job_id: str, step: int | None) -> str:
    """Where the parent's adapter files are stored: its job's final adapter, or the adapter of
    its checkpoint at `step`."""
    if step is None:
        return f"jobs/{job_id}/adapter"
    root = session.scalar(
        select(Checkpoint.storage_key).where(
            Checkpoint.job_id == job_id, Checkpoint.step_number == step
        )
    )
    return checkpoint_adapter_prefix(storage, root or f"jobs/{job_id}/checkpoints/step-{step}")
