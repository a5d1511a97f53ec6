"""Routing by memory: which GPU-class queue a job goes to, and refusing jobs that fit none."""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.catalog import CatalogEntry
from app.config import Settings
from app.errors import InvalidRequest
from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape, estimate_memory
from app.schemas.spec import ResolvedSpec

GiB = 1 << 30


def _hub_cache_config(entry: CatalogEntry) -> Path | None:
    """config.json of a hub model in the local Hugging Face cache, if it is there."""
    if entry.hub_id is None:
        return None
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    snapshots = home / "hub" / f"models--{entry.hub_id.replace('/', '--')}" / "snapshots"
    candidates = [snapshots / entry.revision] if entry.revision else []
    if not candidates and snapshots.is_dir():
        candidates = sorted(snapshots.iterdir())
    for snapshot in candidates:
        if (snapshot / "config.json").is_file():
            return snapshot / "config.json"
    return None


def model_shape(entry: CatalogEntry) -> ModelShape | None:
    """The model's shape from its config.json (no weights loaded); None when unknown."""
    if entry.builtin:
        return TINY_RANDOM_LLAMA_SHAPE
    config = Path(entry.path) / "config.json" if entry.path else _hub_cache_config(entry)
    if config is None or not config.is_file():
        return None
    try:
        return ModelShape.from_config_dict(json.loads(config.read_text()))
    except (ValueError, KeyError, TypeError):
        return None


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
