"""A job on a fine-tuned model starts from its parent's LoRA weights, every tensor of them;
a parent whose LoRA layers differ fails the job with a user error, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.factories import build_config
from worker.training.artifacts import save_peft_adapter
from worker.training.errors import TrainingInputError
from worker.training.models import load_model


@pytest.fixture(scope="module")
def parent_weights(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A parent adapter (r=4) whose B matrices are not zero, as after training."""
    model = load_model(build_config(lora={"r": 4, "alpha": 8}), models_dir).model
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    directory = tmp_path_factory.mktemp("parent")
    save_peft_adapter(model, directory)
    return directory / "adapter_model.safetensors"


def test_every_lora_tensor_starts_as_the_parents(models_dir: Path, parent_weights: Path):
    config = build_config(lora={"r": 4, "alpha": 8})
    model = load_model(config, models_dir, parent_adapter=parent_weights).model
    saved = load_file(str(parent_weights))
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert len(lora) == len(saved) > 0
    for name, parameter in lora.items():
        key = name.replace(".default", "")
        assert torch.equal(parameter.detach(), saved[key]), name


def test_a_parent_with_another_rank_is_a_user_error(models_dir: Path, parent_weights: Path):
    with pytest.raises(TrainingInputError) as raised:
        load_model(build_config(lora={"r": 8}), models_dir, parent_adapter=parent_weights)
    assert (raised.value.code, raised.value.param) == ("parent_lora_mismatch", "model")
