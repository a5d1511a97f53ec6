"""What the API knows of a catalog model without loading it: its config.json."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.architectures import linear_module_names, unknown_target_message, unknown_target_module
from app.catalog import CatalogEntry
from app.errors import InvalidRequest
from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape


def _hub_cache_file(entry: CatalogEntry, name: str) -> Path | None:
    """A file of a hub model in the local Hugging Face cache, if it is there."""
    if entry.hub_id is None:
        return None
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    snapshots = home / "hub" / f"models--{entry.hub_id.replace('/', '--')}" / "snapshots"
    candidates = [snapshots / entry.revision] if entry.revision else []
    if not candidates and snapshots.is_dir():
        candidates = sorted(snapshots.iterdir())
    for snapshot in candidates:
        if (snapshot / name).is_file():
            return snapshot / name
    return None


def _model_file(entry: CatalogEntry, name: str) -> Path | None:
    """A file of a local or cached hub model; None when it is not on this machine."""
    path = Path(entry.path) / name if entry.path else _hub_cache_file(entry, name)
    return path if path is not None and path.is_file() else None


def model_config(entry: CatalogEntry) -> dict[str, Any] | None:
    """The model's config.json as a dict; None when it is not on this machine.

    The built-in's is the one worker/training/tiny.py generates: a Llama of its shape.
    """
    if entry.builtin:
        return {"model_type": "llama", **asdict(TINY_RANDOM_LLAMA_SHAPE)}
    path = _model_file(entry, "config.json")
    if path is None:
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


# What a chat template that writes tools reads: the tools argument or the messages' calls.
TOOLS_IN_TEMPLATE = re.compile(r"\btool(s|_calls)\b")


def chat_template_text(entry: CatalogEntry) -> str | None:
    """The model's chat template(s) as text: "" when it ships none (the worker gives it
    loraforge's, which writes tools), None when the tokenizer is not on this machine."""
    if entry.builtin:
        return None
    jinja = _model_file(entry, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(errors="replace")
    path = _model_file(entry, "tokenizer_config.json")
    if path is None:
        return None
    try:
        template = json.loads(path.read_text()).get("chat_template") or ""
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        return "\n".join(
            str(item.get("template", "")) for item in template if isinstance(item, dict)
        )
    return str(template)


def check_renders_tools(entry: CatalogEntry, tool_examples: int, param: str) -> None:
    """400 chat_template_no_tools for a dataset with tools on a base whose chat template
    never mentions them (it would drop them silently). The built-in writes tools; a model
    whose tokenizer is not on this machine is checked by the worker."""
    if tool_examples <= 0:
        return
    template = chat_template_text(entry)
    if not template or TOOLS_IN_TEMPLATE.search(template):
        return
    raise InvalidRequest(
        f"{tool_examples} examples of the {param} use tools, but the chat template of "
        f"{entry.id!r} does not write tools or tool calls; choose a base model whose template "
        "supports tools (loraforge/tiny-random-llama's does), or a dataset without them",
        param="model",
        code="chat_template_no_tools",
    )
