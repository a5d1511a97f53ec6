"""A model's linear layers from its config.json alone, and which LoRA targets name them.

Pure Python (no torch): the API checks `lora.target_modules` when a job is created; the
worker applies the same rule to the loaded model's modules (worker/training/models.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# model_type values whose *ForCausalLM has Llama's module tree: model.layers.{i}.self_attn.
# {q,k,v,o}_proj, model.layers.{i}.mlp.{gate,up,down}_proj and lm_head, all nn.Linear
# (checked against transformers in tests/test_architectures.py). Other types are not
# checked here: the worker checks them once the model is loaded.
LLAMA_STYLE_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "ministral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "olmo2",
        "granite",
    }
)
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


def linear_module_names(config: Mapping[str, Any]) -> list[str] | None:
    """Full names of every nn.Linear of the causal LM; None for an architecture not known here."""
    if config.get("model_type") not in LLAMA_STYLE_MODEL_TYPES:
        return None
    try:
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        return None
    names = []
    for index in range(layers):
        block = f"model.layers.{index}"
        names += [f"{block}.self_attn.{name}" for name in ATTENTION_LINEARS]
        names += [f"{block}.mlp.{name}" for name in MLP_LINEARS]
    return [*names, "lm_head"]


def matches(target: str, module_name: str) -> bool:
    """peft's rule for a list of targets: the whole name, or its last dotted parts."""
    return module_name == target or module_name.endswith(f".{target}")


def unknown_target_module(targets: Iterable[str], linear_names: Sequence[str]) -> str | None:
    """The first target that names no linear layer; None when every one does."""
    for target in targets:
        if not any(matches(target, name) for name in linear_names):
            return target
    return None


def unknown_target_message(target: str, linear_names: Sequence[str]) -> str:
    """What to tell the user: the target, and the short names they can use instead."""
    choices = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    return (
        f"target module {target!r} is not a linear layer of this model; "
        f"choose from {', '.join(choices)} or use 'all-linear'"
    )
