"""Routing by memory: which GPU-class queue a job goes to, and refusing jobs that fit none."""

from __future__ import annotations

from app.config import Settings
from app.errors import InvalidRequest
from app.memory import estimate_memory
from app.schemas.spec import ResolvedSpec
from app.services.model_configs import model_shape

GiB = 1 << 30


def estimated_bytes(settings: Settings, spec: ResolvedSpec) -> int | None:
    shape = model_shape(settings.catalog()[spec.model])
    return None if shape is None else estimate_memory(spec, shape).total


def route(settings: Settings, spec: ResolvedSpec) -> str:
    """The smallest GPU-class queue the job fits in; 400 insufficient_memory if none."""
    if not settings.queue_memory:
        return settings.job_queue
    needed = estimated_bytes(settings, spec)
    by_size = sorted(settings.queue_memory.items(), key=lambda item: item[1])
    if needed is None:
        return by_size[-1][0]
    for queue, memory in by_size:
        if needed <= memory:
            return queue
    largest = by_size[-1][1]
    raise InvalidRequest(
        f"this job needs about {needed / GiB:.2f} GiB of accelerator memory; the largest worker "
        f"class has {largest / GiB:.2f} GiB. Lower batch_size or max_seq_length, enable "
        "gradient_checkpointing, or use 4-bit quantization.",
        param="training",
        code="insufficient_memory",
    )
