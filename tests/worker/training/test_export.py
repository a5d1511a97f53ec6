"""Merged export: loads with transformers alone and matches the 16-bit base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worker.factories import TINY, build_config, chat_rows, write_jsonl
from worker.training.config import TrainingPaths
from worker.training.engine import run_training
from worker.training.export import export_merged
from worker.training.tiny import ensure_tiny_model

pytestmark = pytest.mark.slow

ROWS = ["The capital of France is", "What is two plus three?", "Buenas noches."]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("export")
    paths = TrainingPaths(
        train_file=write_jsonl(root / "train.jsonl", chat_rows(repeat=4)),
        output_dir=root / "job",
        models_dir=models_dir,
    )
    result = run_training(build_config(max_steps=12), paths)
    assert result.adapter_dir is not None
    return result.adapter_dir


def logits(model: torch.nn.Module, tokenizer: object) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            model(**tokenizer(row, return_tensors="pt")).logits.float()  # type: ignore[operator]
            for row in ROWS
        ]


def test_merged_export_loads_with_transformers_and_matches_base_plus_adapter(
    adapter_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "merged"
    result = export_merged(TINY, adapter_dir, output, models_dir, dtype="float32")
    assert result.max_abs_logit_diff < 1e-4
    assert json.loads((output / "export.json").read_text())["max_abs_logit_diff"] == (
        result.max_abs_logit_diff
    )
    assert "model.safetensors" in result.files
    assert not any(name.startswith("adapter_") for name in result.files)
    merged = AutoModelForCausalLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    base = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(models_dir)).eval()
    base_logits = logits(base, tokenizer)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    for merged_row, adapter_row, base_row in zip(
        logits(merged, tokenizer), logits(with_adapter, tokenizer), base_logits, strict=True
    ):
        torch.testing.assert_close(merged_row, adapter_row, atol=1e-4, rtol=1e-4)
        assert (merged_row - base_row).abs().max() > 0.1  # the merge did change the model


def test_large_exports_are_sharded_and_bf16_stays_close(
    adapter_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "sharded"
    result = export_merged(
        TINY, adapter_dir, output, models_dir, dtype="bfloat16", max_shard_size="300KB"
    )
    shards = [name for name in result.files if name.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in result.files
    # bf16 keeps 8 bits of mantissa: merging rounds, but only a little.
    assert result.max_abs_logit_diff < 0.25
    merged = AutoModelForCausalLM.from_pretrained(output)
    assert merged.dtype == torch.bfloat16
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_an_export_clears_what_an_attempt_killed_mid_save_left_behind(
    adapter_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "ftexp-1"
    killed = tmp_path / ".ftexp-1.staging-abc123"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 1024)  # cut short
    other = tmp_path / ".ftexp-2.staging-def456"  # another export's save, still running
    other.mkdir()
    result = export_merged(TINY, adapter_dir, output, models_dir, dtype="float32")
    assert not killed.exists()
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, output.name]
    assert "model.safetensors" in result.files
