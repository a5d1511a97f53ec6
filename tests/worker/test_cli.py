"""`loraforge train SPEC.json --output DIR` on the tiny model: adapter, results.csv, summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.worker.factories import chat_rows, write_jsonl
from worker.cli import run_train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"trained_tokens", "train_runtime", "tokens_per_second", "final_loss"}


def write_spec(directory: Path, **overrides: Any) -> Path:
    """A job body as POSTed to /v1/fine_tuning/jobs, with local relative file paths."""
    write_jsonl(directory / "train.jsonl", chat_rows(repeat=3))
    write_jsonl(directory / "validation.jsonl", chat_rows(repeat=1))
    body = {
        "model": "loraforge/tiny-random-llama",
        "training_file": "train.jsonl",
        "validation_file": "validation.jsonl",
        "seed": 3,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
        "lora": {"r": 8, "alpha": 16},
        "training": {"max_steps": 6, "max_seq_length": 64, "learning_rate": 0.01},
        **overrides,
    }
    spec = directory / "spec.json"
    spec.write_text(json.dumps(body))
    return spec


def test_run_train_writes_adapter_and_results_and_prints_a_json_summary(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    summary = run_train(write_spec(tmp_path), output, data_dir=data_dir)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == summary
    assert SUMMARY_KEYS | {"peak_memory_bytes"} <= set(summary)
    assert summary["trained_tokens"] > 0 and summary["final_loss"] > 0
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    rows = (output / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6


def test_run_train_reports_bad_input_as_a_json_error(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, lora={"target_modules": ["attention"]})
    with pytest.raises(SystemExit) as exited:
        run_train(spec, tmp_path / "out", data_dir=data_dir)
    assert exited.value.code == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert (error["code"], error["param"]) == ("unknown_target_module", "lora.target_modules")


def test_loraforge_train_command_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    output = tmp_path / "out"
    environment = {
        **os.environ,
        "LORAFORGE_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "train",
            str(write_spec(tmp_path)),
            "--output",
            str(output),
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(summary) >= SUMMARY_KEYS
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "results.csv").is_file()
