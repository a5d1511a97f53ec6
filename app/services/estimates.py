"""What a job would need and where it would run, from the same request that creates it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidRequest
from app.memory import estimate_memory, lora_param_count
from app.schemas.estimates import EstimatePublic, MemoryBreakdown
from app.schemas.jobs import JobCreate, JobError, hyperparameters_public
from app.schemas.spec import ResolvedSpec
from app.services.capacity import route
from app.services.jobs import resolve_request
from app.services.model_configs import model_shape


def memory_breakdown(settings: Settings, spec: ResolvedSpec) -> MemoryBreakdown | None:
    """The estimate by part, or None when the model's shape is unknown here."""
    shape = model_shape(settings.catalog()[spec.model])
    if shape is None:
        return None
    estimate = estimate_memory(spec, shape)
    return MemoryBreakdown(
        total_bytes=estimate.total,
        linear_weights_bytes=estimate.linear_weights,
        embeddings_bytes=estimate.embeddings,
        lora_params_bytes=estimate.lora_params,
        gradients_bytes=estimate.gradients,
        optimizer_state_bytes=estimate.optimizer_state,
        activations_bytes=estimate.activations,
        cuda_context_bytes=estimate.cuda_context,
        bits_per_quantized_weight=estimate.bits_per_quantized_weight,
        trainable_parameters=lora_param_count(spec, shape),
    )


def estimate_job(
    session: Session, settings: Settings, *, organization_id: str, body: JobCreate
) -> EstimatePublic:
    """Validate and resolve `body` as job creation does, without creating or enqueueing."""
    spec = resolve_request(session, settings, organization_id, body)
    queue: str | None
    error: JobError | None = None
    try:
        queue = route(settings, spec)
    except InvalidRequest as exc:
        if exc.code != "insufficient_memory":
            raise
        queue, error = None, JobError(code=exc.code, message=exc.message, param=exc.param)
    return EstimatePublic(
        model=spec.model,
        method=spec.method,
        hyperparameters=hyperparameters_public(spec),
        lora=spec.lora,
        quantization=spec.quantization,
        training=spec.training,
        memory=memory_breakdown(settings, spec),
        queue=queue,
        fits=queue is not None,
        error=error,
    )
