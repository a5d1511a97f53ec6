"""The API's table of linear layer names (app/architectures.py) against the models
transformers really builds, so a job the API accepts is one the worker can train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from app.architectures import LLAMA_STYLE_MODEL_TYPES, linear_module_names
from app.catalog import BUILTIN_MODELS
from app.services.model_configs import model_config
from worker.training.tiny import ensure_tiny_model

SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def linear_names(model: torch.nn.Module) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("model_type", sorted(LLAMA_STYLE_MODEL_TYPES))
def test_the_table_names_every_linear_layer_transformers_builds(model_type: str) -> None:
    config = AutoConfig.for_model(model_type, **SMALL)
    model = AutoModelForCausalLM.from_config(config)
    as_saved = json.loads(config.to_json_string())  # what a config.json holds
    assert sorted(linear_module_names(as_saved) or []) == linear_names(model)


def test_the_builtin_models_config_names_its_generated_layers(models_dir: Path) -> None:
    generated = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(models_dir))
    config = model_config(BUILTIN_MODELS[0])
    assert config is not None
    assert sorted(linear_module_names(config) or []) == linear_names(generated)


def test_an_architecture_outside_the_table_is_not_guessed() -> None:
    assert linear_module_names({"model_type": "gpt2", "n_layer": 2}) is None
    assert linear_module_names({"model_type": "llama"}) is None
