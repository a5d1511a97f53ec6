"""run_training end to end: artifacts, hooks, stop, exact resume, and typed input errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from app.catalog import CatalogEntry
from tests.worker.factories import build_config, write_jsonl
from worker.training.artifacts import file_sha256
from worker.training.builders import build_bnb_config
from worker.training.checkpoint import COMPLETE_MARKER
from worker.training.config import TrainingConfig, TrainingPaths
from worker.training.data import load_dataset
from worker.training.engine import TrainingResult, run_training
from worker.training.errors import TrainingInputError
from worker.training.loop import build_eval_batches
from worker.training.metrics import StepMetrics, TrainingHooks, read_results
from worker.training.models import inference_mode, load_base_model, load_model
from worker.training.tiny import tiny_model_dir

pytestmark = pytest.mark.slow

MakePaths = Callable[..., TrainingPaths]


class StopAfter:
    """should_stop that asks for `reason` once `step` has been reported."""

    def __init__(self, step: int, reason: str = "pause") -> None:
        self.step, self.reason = step, reason
        self.seen: list[StepMetrics] = []
        self.checkpoints: list[tuple[int, Path]] = []

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(
            on_metrics=self.seen.append,
            on_checkpoint=lambda step, path, metrics: self.checkpoints.append((step, path)),
            should_stop=lambda: (
                self.reason if self.seen and self.seen[-1].step >= self.step else None
            ),  # type: ignore[return-value,arg-type]
        )


def eval_loss_of_adapter(config: TrainingConfig, paths: TrainingPaths, adapter: Path) -> float:
    """Recompute the validation loss with the adapter loaded by peft on a fresh 4-bit base."""
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = load_base_model(
        tiny_model_dir(paths.models_dir),
        config.model,
        dtype=torch.float32,
        device="cpu",
        quantization_config=build_bnb_config(config),
    )
    model = PeftModel.from_pretrained(base, adapter)
    inference_mode(model)
    assert paths.validation_file is not None
    data = load_dataset(paths.validation_file, tokenizer, max_seq_length=64, train_on="assistant")
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for batch in build_eval_batches(data.examples, 4, tokenizer.pad_token_id):
            logits = model(**batch.model_inputs("cpu"), use_cache=False).logits[:, :-1]
            labels = batch.labels[:, 1:]
            loss_sum += float(
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            )
            count += int((labels != -100).sum())
    return loss_sum / count


def test_run_writes_adapter_results_and_provenance(
    make_paths: MakePaths, validation_file: Path
) -> None:
    paths = make_paths(validation_file=validation_file)
    config = build_config(max_steps=10, eval_every_steps=5)
    seen: list[StepMetrics] = []
    result = run_training(config, paths, TrainingHooks(on_metrics=seen.append))
    assert (result.status, result.stop_reason, result.global_step) == ("completed", None, 10)
    assert result.adapter_dir == paths.adapter_dir
    names = {p.name for p in paths.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert {"README.md", "provenance.json"} <= names
    provenance = json.loads((paths.adapter_dir / "provenance.json").read_text())
    assert provenance["training_file_sha256"] == file_sha256(paths.train_file)
    assert provenance["seed"] == 7 and provenance["base_model"]["id"] == config.model.id
    assert provenance["resolved_spec"]["training"]["max_steps"] == 10
    assert provenance["libraries"]["torch"] == metadata.version("torch")
    rows = read_results(paths.results_csv)
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert rows[4]["valid_loss"] and not rows[3]["valid_loss"]
    # The last step is a checkpoint: the whole validation set, as OpenAI's full_valid_*.
    assert rows[9]["full_valid_loss"] and not rows[4]["full_valid_loss"]
    assert all(0 <= float(r["train_mean_token_accuracy"]) <= 1 for r in rows)
    # trained_tokens: the labelled tokens of every step, summed.
    assert result.trained_tokens == seen[-1].trained_tokens > 0
    assert all(m.total_steps == 10 and m.tokens_per_second > 0 for m in seen)
    assert seen[-1].eta_seconds == 0.0 and seen[0].eta_seconds > 0
    assert result.peak_memory_bytes > 50 << 20
    assert result.full_valid_loss is not None
    assert result.full_valid_mean_token_accuracy is not None
    # The adapter, loaded by peft on a fresh base, reproduces the trained model's eval loss.
    reproduced = eval_loss_of_adapter(config, paths, paths.adapter_dir)
    assert reproduced == pytest.approx(result.full_valid_loss, abs=1e-5)


def test_should_stop_ends_training_within_one_step_with_a_usable_checkpoint(
    make_paths: MakePaths,
) -> None:
    paths = make_paths()
    stopper = StopAfter(3, reason="cancel")
    result = run_training(build_config(max_steps=10), paths, stopper.hooks())
    assert (result.status, result.stop_reason, result.global_step) == ("stopped", "cancel", 3)
    assert [m.step for m in stopper.seen] == [1, 2, 3]
    assert result.adapter_dir is None and not paths.adapter_dir.exists()
    assert result.checkpoint_dir == paths.checkpoints_dir / "step-3"
    assert stopper.checkpoints == [(3, result.checkpoint_dir)]
    assert (result.checkpoint_dir / COMPLETE_MARKER).is_file()
    assert len(read_results(paths.results_csv)) == 3
    config = build_config()
    base = load_base_model(
        tiny_model_dir(paths.models_dir),
        config.model,
        dtype=torch.float32,
        device="cpu",
        quantization_config=build_bnb_config(config),
    )
    model = PeftModel.from_pretrained(base, result.checkpoint_dir / "adapter")
    assert model(input_ids=torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 512)


def final_lr(result: TrainingResult) -> float:
    return float(read_results(result.results_csv)[-1]["lr"])


def test_resume_continues_exactly_where_it_stopped(
    make_paths: MakePaths, validation_file: Path
) -> None:
    config = build_config(
        max_steps=12, gradient_accumulation_steps=2, eval_every_steps=4, checkpoint_every_steps=3
    )
    straight = run_training(config, make_paths("straight", validation_file=validation_file))
    paths = make_paths("resumed", validation_file=validation_file)
    stopped = run_training(config, paths, StopAfter(6).hooks())
    assert (stopped.status, stopped.global_step) == ("stopped", 6)
    # A later checkpoint that was never completed (a crash while writing) must be ignored.
    partial = paths.checkpoints_dir / "step-9"
    (partial / "adapter").mkdir(parents=True)
    (partial / "optimizer.pt").write_bytes(b"truncated")
    resumed = run_training(config, paths)
    assert resumed.resumed_from_step == 6
    assert (resumed.status, resumed.global_step) == ("completed", straight.global_step)
    assert final_lr(resumed) == final_lr(straight)
    assert resumed.final_loss is not None and straight.final_loss is not None
    assert abs(resumed.final_loss - straight.final_loss) < 1e-4
    assert resumed.full_valid_loss == pytest.approx(straight.full_valid_loss, abs=1e-4)
    assert resumed.trained_tokens == straight.trained_tokens
    straight_losses = [r["train_loss"] for r in read_results(straight.results_csv)]
    resumed_losses = [r["train_loss"] for r in read_results(resumed.results_csv)]
    assert len(resumed_losses) == 12
    assert [float(v) for v in resumed_losses] == pytest.approx(
        [float(v) for v in straight_losses], abs=1e-4
    )


def test_the_next_run_removes_what_a_run_killed_mid_save_left(make_paths: MakePaths) -> None:
    paths = make_paths()
    run_training(build_config(max_steps=4), paths, StopAfter(2).hooks())
    # What kill -9 leaves mid-save: a checkpoint's staging directory, a step directory whose
    # marker went first while it was being replaced, and an adapter's staging directory.
    staging = paths.checkpoints_dir / ".step-3-x1y2z3"
    (staging / "adapter").mkdir(parents=True)
    (staging / "optimizer.pt").write_bytes(b"truncated")
    (paths.checkpoints_dir / "step-1" / "adapter").mkdir(parents=True)
    (paths.output_dir / ".adapter-x1y2z3").mkdir()
    resumed = run_training(build_config(max_steps=4), paths)
    assert (resumed.status, resumed.resumed_from_step) == ("completed", 2)
    assert sorted(p.name for p in paths.checkpoints_dir.iterdir()) == ["step-2", "step-4"]
    assert sorted(p.name for p in paths.output_dir.iterdir()) == [
        "adapter",
        "checkpoints",
        "results.csv",
    ]


def test_resume_can_be_declined(make_paths: MakePaths) -> None:
    paths = make_paths()
    run_training(build_config(max_steps=4), paths, StopAfter(2).hooks())
    fresh = run_training(build_config(max_steps=4), paths, resume=False)
    assert fresh.resumed_from_step is None and fresh.global_step == 4


@pytest.mark.parametrize(
    ("quantization", "optimizer", "layer_type"),
    [
        ({"bits": 8}, "adamw_8bit", "Linear8bitLt"),
        ({"bits": None}, "adamw_torch", "Linear"),
        (
            {"bits": 4, "quant_type": "fp4", "double_quant": False},
            "paged_adamw_32bit",
            "Linear4bit",
        ),
    ],
)
def test_other_precisions_train_too(
    make_paths: MakePaths, quantization: dict[str, Any], optimizer: str, layer_type: str
) -> None:
    config = build_config(max_steps=16, quantization=quantization, optimizer=optimizer)
    losses: list[float] = []
    result = run_training(
        config, make_paths(), TrainingHooks(on_metrics=lambda m: losses.append(m.train_loss))
    )
    assert result.status == "completed"
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    loaded = load_model(config, make_paths().models_dir)
    q_proj = loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == layer_type
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())  # type: ignore[operator]
    assert adapter_config["r"] == 8


def test_unknown_target_module_is_a_typed_error(make_paths: MakePaths) -> None:
    config = build_config(lora={"target_modules": ["q_proj", "query_key_value"]})
    with pytest.raises(TrainingInputError) as caught:
        run_training(config, make_paths())
    error = caught.value
    assert (error.code, error.param) == ("unknown_target_module", "lora.target_modules")
    assert "'query_key_value'" in error.message and "q_proj" in error.message


def test_sequence_limit_below_every_prompt_is_a_typed_error(
    make_paths: MakePaths, tmp_path: Path
) -> None:
    rows = [{"prompt": "Tell me about the river. " * 8, "completion": " It is cold."}] * 4
    paths = make_paths(train_file=write_jsonl(tmp_path / "long.jsonl", rows))
    with pytest.raises(TrainingInputError) as caught:
        run_training(build_config(max_seq_length=16), paths)
    assert caught.value.code == "max_seq_length_below_prompt"
    assert "max_seq_length=16" in caught.value.message


def test_missing_model_and_pickle_only_weights_are_typed_errors(
    make_paths: MakePaths, tmp_path: Path
) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    cases = [
        (CatalogEntry(id="gone", path=str(tmp_path / "gone")), "model_not_found"),
        (CatalogEntry(id="pickled", path=str(pickled)), "model_weights_not_safetensors"),
        (CatalogEntry(id="hub", hub_id="nobody/nothing", revision="abc"), "model_not_found"),
    ]
    for entry, code in cases:
        config = TrainingConfig.from_spec(build_config().spec, entry, device="cpu")
        with pytest.raises(TrainingInputError) as caught:
            run_training(config, make_paths())
        assert (caught.value.code, caught.value.param) == (code, "model")


def test_packing_takes_fewer_steps_for_the_same_trained_tokens(make_paths: MakePaths) -> None:
    options = {"max_steps": None, "max_seq_length": 128}
    unpacked = run_training(build_config(packing=False, **options), make_paths("unpacked"))
    packed = run_training(build_config(packing=True, **options), make_paths("packed"))
    # 16 examples of about 40 tokens: 4 batches of 4 rows, or 3 examples per 128-token row.
    assert unpacked.total_steps == 4
    assert packed.total_steps < unpacked.total_steps
    assert packed.trained_tokens == unpacked.trained_tokens


def test_cpu_job_without_cuda_kernels_trains_and_says_which_path_ran(
    make_paths: MakePaths,
) -> None:
    paths = make_paths()
    messages: list[str] = []
    seen: list[StepMetrics] = []
    hooks = TrainingHooks(on_metrics=seen.append, on_message=messages.append)
    result = run_training(build_config(max_steps=6), paths, hooks)
    assert result.status == "completed" and seen[-1].train_loss < seen[0].train_loss
    path = result.compute_path
    assert path["attention"] == "loraforge_varlen_sdpa"
    assert path["loss"] == "chunked_cross_entropy" and path["kernels"] == []
    assert "Liger kernels are CUDA-only" in path["fallbacks"]
    provenance = json.loads((paths.adapter_dir / "provenance.json").read_text())
    assert provenance["compute_path"] == path
    (line,) = messages
    assert "attention loraforge_varlen_sdpa" in line and "loss chunked_cross_entropy" in line
