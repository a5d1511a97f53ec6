"""Routing by memory: which GPU-class queue a job goes to, and refusing jobs no worker can hold."""

from __future__ import annotations

from app.config import Settings
from app.errors import InvalidRequest
from app.memory import MEMORY_ADVICE, estimate_memory
from app.schemas.spec import ResolvedSpec
from app.services.model_configs import model_shape

GiB = 1 << 30


def estimated_bytes(settings: Settings, spec: ResolvedSpec) -> int | None:
    """The job's memory estimate; None when the model's shape is not known here."""
    shape = model_shape(settings.catalog()[spec.model])
    return None if shape is None else estimate_memory(spec, shape).total


def route(settings: Settings, spec: ResolvedSpec) -> str:
    """The job's queue: the smallest GPU class it fits, or the one training queue.

    A job larger than every class (LORAFORGE_QUEUE_MEMORY), or than the workers' memory
    (LORAFORGE_WORKER_MEMORY_BYTES, which `loraforge serve` measures), is refused with 400
    insufficient_memory. With neither set the API cannot know, and accepts it.
    """
    if settings.queue_memory:
        return _smallest_class(settings, spec)
    limit = settings.worker_memory_bytes
    needed = estimated_bytes(settings, spec) if limit is not None else None
    if limit is not None and needed is not None and needed > limit:
        raise _insufficient_memory(needed, f"the workers have {limit / GiB:.2f} GiB")
    return settings.job_queue


def _smallest_class(settings: Settings, spec: ResolvedSpec) -> str:
    needed = estimated_bytes(settings, spec)
    by_size = sorted(settings.queue_memory.items(), key=lambda item: item[1])
    if needed is None:
        return by_size[-1][0]
    for queue, memory in by_size:
        if needed <= memory:
            return queue
    largest = by_size[-1][1]
    raise _insufficient_memory(needed, f"the largest worker class has {largest / GiB:.2f} GiB")


def _insufficient_memory(needed: int, available: str) -> InvalidRequest:
    return InvalidRequest(
        f"this job needs about {needed / GiB:.2f} GiB of memory; {available}. {MEMORY_ADVICE}.",
        param="training",
        code="insufficient_memory",
    )
