"""A job's memory estimate and routing, before it is created (a loraforge extension)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.schemas.jobs import DpoHyperparametersPublic, JobError, SupervisedHyperparametersPublic
from app.schemas.spec import LoraSpec, MethodType, QuantizationSpec, ResolvedTrainingSpec


class MemoryBreakdown(BaseModel):
    """Bytes of accelerator memory by part (app.memory.estimate_memory), for a CUDA device."""

    total_bytes: int
    linear_weights_bytes: int
    embeddings_bytes: int
    lora_params_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int
    cuda_context_bytes: int
    bits_per_quantized_weight: float
    trainable_parameters: int


class EstimatePublic(BaseModel):
    object: Literal["fine_tuning.estimate"] = "fine_tuning.estimate"
    model: str
    method: MethodType = "supervised"
    hyperparameters: DpoHyperparametersPublic | SupervisedHyperparametersPublic
    lora: LoraSpec
    quantization: QuantizationSpec
    training: ResolvedTrainingSpec
    # None when this server does not know the model's shape (its config.json is not local).
    memory: MemoryBreakdown | None
    # The queue the job would be routed to; None when it fits no worker class.
    queue: str | None
    fits: bool
    # Why the job would be refused (insufficient_memory), when it would be.
    error: JobError | None = None
