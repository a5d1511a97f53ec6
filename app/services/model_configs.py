"""What the API knows of a catalog model without loading it: its config.json."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.architectures import linear_module_names, unknown_target_message, unknown_target_module
from app.catalog import CatalogEntry
from app.errors import InvalidRequest
from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape


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


def model_config(entry: CatalogEntry) -> dict[str, Any] | None:
    """The model's config.json as a dict; None when it is not on this machine.

    The built-in's is the one worker/training/tiny.py generates: a Llama of its shape.
    """
    if entry.builtin:
        return {"model_type": "llama", **asdict(TINY_RANDOM_LLAMA_SHAPE)}
    path = Path(entry.path) / "config.json" if entry.path else _hub_cache_config(entry)
    if path is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_shape(entry: CatalogEntry) -> ModelShape | None:
    """The model's shape from its config.json (no weights loaded); None when unknown."""
    config = model_config(entry)
    if config is None:
        return None
    try:
        return ModelShape.from_config_dict(config)
    except (ValueError, KeyError, TypeError):
        return None


def check_target_modules(entry: CatalogEntry, target_modules: str | list[str]) -> None:
    """400 unknown_target_module for a target that names no linear layer of the model.

    Checked only where the architecture is known from its config; the worker checks the
    rest once the model is loaded.
    """
    if isinstance(target_modules, str):
        return
    config = model_config(entry)
    linear_names = linear_module_names(config) if config is not None else None
    if linear_names is None:
        return
    unknown = unknown_target_module(target_modules, linear_names)
    if unknown is not None:
        raise InvalidRequest(
            unknown_target_message(unknown, linear_names),
            param="lora.target_modules",
            code="unknown_target_module",
        )
