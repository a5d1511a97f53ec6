"""QLoRA for real on the CPU: NF4 + double quant base, LoRA on every linear layer, paged
optimizer. One short training run, inspected from several sides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from transformers import set_seed

from tests.worker.factories import build_config, chat_rows, write_jsonl
from worker.training.artifacts import save_adapter
from worker.training.builders import build_bnb_config
from worker.training.config import TrainingConfig, TrainingPaths
from worker.training.engine import build_run, load_data, train
from worker.training.loop import TrainingRun, evaluate
from worker.training.metrics import StepMetrics, TrainingHooks
from worker.training.models import LoadedModel, inference_mode, load_base_model, load_model

pytestmark = pytest.mark.slow

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainedRun:
    config: TrainingConfig
    paths: TrainingPaths
    loaded: LoadedModel
    run: TrainingRun
    before: dict[str, torch.Tensor]
    initial_eval_loss: float
    metrics: list[StepMetrics]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> TrainedRun:
    """40 steps of the engine's own train() on a repetitive chat dataset."""
    root = tmp_path_factory.mktemp("qlora")
    paths = TrainingPaths(
        train_file=write_jsonl(root / "train.jsonl", chat_rows(repeat=4)),
        validation_file=write_jsonl(root / "validation.jsonl", chat_rows(repeat=1)),
        output_dir=root / "job",
        models_dir=models_dir,
    )
    config = build_config(max_steps=40, eval_every_steps=20, optimizer="paged_adamw_8bit")
    set_seed(config.seed)
    loaded = load_model(config, models_dir)
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    train_data, eval_data = load_data(config, paths, loaded.tokenizer)
    run = build_run(config, loaded.model, loaded.tokenizer.pad_token_id, train_data, eval_data)
    initial_eval_loss, _ = evaluate(run)
    metrics: list[StepMetrics] = []
    stop_reason, _, _ = train(run, paths, TrainingHooks(on_metrics=metrics.append), None)
    assert stop_reason is None
    return TrainedRun(config, paths, loaded, run, before, initial_eval_loss, metrics)


def test_loss_falls_clearly(trained: TrainedRun) -> None:
    losses = [m.train_loss for m in trained.metrics]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    final_eval = trained.metrics[-1].full_valid_loss
    assert final_eval is not None and final_eval < 0.5 * trained.initial_eval_loss
    assert trained.metrics[19].valid_loss is not None and trained.metrics[18].valid_loss is None


def test_training_token_accuracy_rises_as_the_loss_falls(trained: TrainedRun) -> None:
    accuracies = [m.train_mean_token_accuracy for m in trained.metrics]
    assert all(0 <= a <= 1 for a in accuracies)
    first, last = sum(accuracies[:5]) / 5, sum(accuracies[-5:]) / 5
    assert last > first + 0.2, (first, last)
    final = trained.metrics[-1]
    assert final.full_valid_mean_token_accuracy == final.valid_mean_token_accuracy
    assert final.full_valid_mean_token_accuracy is not None
    assert final.full_valid_mean_token_accuracy > 0.5


def test_every_lora_tensor_changed_and_the_base_did_not(trained: TrainedRun) -> None:
    after = dict(trained.loaded.model.named_parameters())
    lora = [name for name in after if "lora_" in name]
    # A and B for 7 linear layers in each of the 2 blocks.
    assert len(lora) == 2 * 7 * 2
    for name, tensor in after.items():
        if name in lora:
            assert not torch.equal(tensor, trained.before[name]), f"{name} did not change"
        else:
            assert torch.equal(tensor, trained.before[name]), f"base weight {name} changed"


def test_base_layers_are_nf4_with_double_quantization(trained: TrainedRun) -> None:
    quantized = {
        name: module
        for name, module in trained.loaded.model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }
    assert {name.rsplit(".", 2)[-2] for name in quantized} == set(LINEAR_NAMES)
    assert len(quantized) == 2 * 7
    for module in quantized.values():
        state = module.weight.quant_state
        assert module.weight.dtype == torch.uint8
        assert state.quant_type == "nf4"
        assert state.nested, "absmax is not double-quantized"


def test_optimizer_is_the_paged_one_asked_for_and_holds_only_lora(trained: TrainedRun) -> None:
    optimizer = trained.run.optimizer
    assert type(optimizer) is bnb.optim.PagedAdamW8bit
    assert optimizer.is_paged
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    lora = {id(p) for n, p in trained.loaded.model.named_parameters() if "lora_" in n}
    assert held == lora


def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inference_mode(model)
    with torch.no_grad():
        return model(**batch, use_cache=False).logits  # type: ignore[no-any-return]


def test_saved_adapter_reproduces_the_trained_models_logits(
    trained: TrainedRun, models_dir: Path
) -> None:
    adapter_dir = trained.paths.output_dir / "adapter"
    save_adapter(trained.loaded.model, trained.loaded.tokenizer, adapter_dir, {}, "card")
    batch = trained.run.eval_batches[0].model_inputs("cpu")
    expected = logits(trained.loaded.model, batch)
    base = load_base_model(
        trained.loaded.model_dir,
        trained.config.model,
        dtype=torch.float32,
        device="cpu",
        quantization_config=build_bnb_config(trained.config),
    )
    without_adapter = logits(base, batch)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=1e-5)
    assert (without_adapter - expected).abs().max() > 1.0  # the adapter does matter
