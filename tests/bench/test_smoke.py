"""Each benchmark runs at its --quick setting and writes valid JSON with the expected keys.

Benchmarks, not timed tests: nothing here asserts a speed. The service benchmarks need the
local PostgreSQL and Redis, like the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str, timeout: float = 900) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]


def result(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    return data


def test_trainer_benchmark_compares_every_trainer_on_both_profiles(tmp_path: Path) -> None:
    import trl  # noqa: F401  (the bench extra; a missing baseline must fail, not skip)

    run_bench("bench/trainer_vs_trl.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "trainer_vs_trl")
    assert {"load_average_start", "load_average_end", "hyperparameters", "goals"} <= data.keys()
    for profile in ("high", "low"):
        trainers = data["summary"][profile]
        assert set(trainers) == {"loraforge", "loraforge_packing", "trl", "trl_packing"}
        for figures in trainers.values():
            assert figures["tokens_per_s"] > 0
            assert 0 <= figures["padding_share"] < 1
            assert figures["peak_rss_bytes"] > 0
            assert figures["eval_loss"] > 0
        # Same data, same tokenization: every trainer trained on the same label tokens, and
        # all but TRL's packing (which keeps examples truncation left without labels) saw
        # the same input tokens.
        assert len({round(f["label_tokens"]) for f in trainers.values()}) == 1
        same_input = ("loraforge", "loraforge_packing", "trl")
        assert len({round(trainers[t]["tokens"]) for t in same_input}) == 1
    assert "loraforge/trl_tokens_per_s" in data["ratios"]["high"]


def test_quant_memory_counts_nf4_bits_from_the_tensors(tmp_path: Path) -> None:
    run_bench("bench/quant_memory.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "quant_memory")
    layer = data["large_layer"]
    with_dq = layer["double_quant"]["bits_per_weight_all"]
    assert 4.12 < with_dq < layer["no_double_quant"]["bits_per_weight_all"]
    assert {"model", "optimizer", "adapter", "goal"} <= data.keys()
    assert data["optimizer"]["paged_adamw_8bit_state_bytes"] > 0


def test_estimator_benchmark_measures_each_configuration(tmp_path: Path) -> None:
    run_bench("bench/estimator_accuracy.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "estimator_accuracy")
    (config,) = data["cpu"]
    assert config["measured_static_bytes"] > 0 and config["measured_transient_peak_bytes"] > 0
    assert config["estimate_bytes"] > 0 and "ratio" in config


def test_gpu_script_runs_its_tiny_shape_on_the_cpu(tmp_path: Path) -> None:
    run_bench("bench/gpu/qlora_h200.py", "--shape", "tiny", "--out", str(tmp_path))
    data = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert data["qlora"]["tokens_per_s"] > 0 and "mfu" in data["qlora"]
    assert data["lora16"]["step_s"] > 0
    assert data["packing"]["packing_speedup"] > 0
    assert set(data["optimizers"]) == {"paged_adamw_8bit", "paged_adamw_32bit", "adamw_torch"}


def test_gpu_speed_script_runs_every_phase_tiny_on_the_cpu(tmp_path: Path) -> None:
    run_bench("bench/gpu/speed_h200.py", "--tiny", "--out", str(tmp_path))
    data = json.loads((tmp_path / "gpu_speed_tiny.json").read_text())
    speed = data["8b"]
    for name in ("loraforge", "loraforge_packing", "loraforge_full", "trl_best"):
        assert speed[name]["tokens_per_s"] > 0 and speed[name]["loss_curve"], name
        assert "mfu" in speed[name]
    assert speed["loraforge"]["compute_path"]["attention"] == "loraforge_varlen_sdpa"
    assert "loraforge_packing/trl_best" in speed["ratios"]
    capped = data["65b"]
    assert capped["engine"]["tokens_per_s"] > 0 and capped["estimate_fits_48gb"]
    assert capped["memory"]["estimate_total_bytes"] > 0


@pytest.mark.postgres
def test_api_benchmark_loads_every_endpoint_and_uploads(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the upload is sent with curl"
    run_bench("bench/api_load.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "api_load")
    assert data["upload"]["http_status"] == 200 and data["upload"]["mb_per_s"] > 0
    for name in ("get_job", "list_events", "post_job"):
        assert data["load"][name]["requests"] > 0
        assert data["load"][name]["non_2xx"] == 0
    assert data["load_generator"]["name"]


@pytest.mark.postgres
def test_api_comparison_runs_both_revisions_on_every_endpoint(tmp_path: Path) -> None:
    assert shutil.which("git"), "the base revision is exported with git archive"
    args = ("--base", "HEAD", "--repeats", "1", "--duration", "1", "--out-dir", str(tmp_path))
    run_bench("bench/api_compare.py", *args)
    data = result(tmp_path, "api_compare")
    assert len(data["base"]["commit"]) == 40
    for name in ("healthz", "get_job", "list_events", "post_job"):
        for tree in ("base", "new"):
            (run,) = data["runs"][tree][name]
            assert run["requests"] > 0 and run["non_2xx"] == 0
        assert data["summary"][name]["ratio_requests_per_s"] > 0


@pytest.mark.postgres
def test_instruction_count_benchmark_counts_a_request_of_both_revisions(tmp_path: Path) -> None:
    assert shutil.which("valgrind"), "valgrind counts the instructions"
    run_bench("bench/api_instructions.py", "--quick", "--base", "HEAD", "--out-dir", str(tmp_path))
    data = result(tmp_path, "api_instructions")
    assert len(data["base"]["commit"]) == 40
    row = data["summary"]["get_job"]
    assert row["base_instructions"] > 0 and row["new_instructions"] > 0 and row["ratio"] > 0


@pytest.mark.postgres
def test_job_latency_benchmark_writes_both_brokers(tmp_path: Path) -> None:
    run_bench("bench/job_latency.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "job_latency")
    for stack in ("redis", "embedded"):
        assert data[stack]["post_to_running"]["n"] == 2


def test_inference_benchmark_measures_the_server_and_generate(tmp_path: Path) -> None:
    run_bench("bench/inference.py", "--quick", "--out-dir", str(tmp_path))
    data = result(tmp_path, "inference")
    for shape in ("one_stream", "eight_streams_one_adapter", "eight_streams_two_adapters"):
        assert data["server"][shape]["tokens_per_round"] > 0
    assert data["transformers"]["one_stream"]["tokens_per_s"] > 0
    assert data["adapters"]["adapters_loaded"] == 2


def test_report_renders_tables_and_plots_from_results(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (the bench extra)

    out = tmp_path / "site" / "RESULTS.md"
    results = str(ROOT / "bench" / "results")
    run_bench("bench/report.py", "--results-dir", results, "--out", str(out))
    text = out.read_text()
    assert "## Goals" in text and "| --- |" in text
    for image in out.parent.glob("*.png"):
        assert image.read_bytes().startswith(b"\x89PNG")
        assert f"({image.name})" in text
