"""The memory estimator (app.memory.estimate_memory) against memory measured while training.

On the CPU there is no max_memory_allocated, so "measured" is, honestly:
  static:    bytes of every live tensor before the step (parameters, buffers, 4-bit
             quantization state, LoRA weights, optimizer state), counted one by one;
  transient: the peak of torch's CPU allocator total during one training step above that
             (the profiler's memory events, profile_memory=True): activations kept for
             backward, logits and their gradients, gradients, temporaries.
The estimate is compared without its CUDA-context term (512 MiB, absent on the CPU). The CPU
path differs from CUDA in a way the estimator does not model (bitsandbytes dequantizes each
weight to an fp32 temporary); compute is fp32 there, so the estimate uses its fp32 activation
terms (no 16-bit copies), where a GPU job at bf16 uses the 16-bit ones. The GPU figures
(bench/gpu, measured with torch.cuda.max_memory_allocated on an H200) test it where it is
used, and are copied here from bench/results/gpu_h200.json when that file exists.

    python bench/estimator_accuracy.py [--quick]

Prints JSON and writes bench/results/estimator_accuracy.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.memory import ModelShape, estimate_memory
from bench.common import (
    RESULTS_DIR,
    finish,
    header,
    library_versions,
    model_tensors,
    unique_bytes,
)
from bench.synthetic import BENCH_SHAPE, QUICK_SHAPE, build_model_dir, shape_dict

GOAL_WITHIN = 0.15
# (name, batch, sequence length, gradient checkpointing, bits)
CONFIGS = [
    ("nf4 b4 x 256, checkpointing", 4, 256, True, 4),
    ("nf4 b8 x 512, checkpointing", 8, 512, True, 4),
    ("nf4 b4 x 256, no checkpointing", 4, 256, False, 4),
    ("fp32 LoRA b4 x 256, checkpointing", 4, 256, True, None),
]
QUICK_CONFIGS = [("nf4 b2 x 64, checkpointing", 2, 64, True, 4)]


def live_tensor_bytes(model: Any, optimizer: Any) -> int:
    """Parameters, buffers, 4-bit quantization state and optimizer state, each counted once."""
    import torch

    tensors = model_tensors(model)
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return unique_bytes(tensors)


def peak_transient_bytes(step: Any, trace: Path) -> int:
    """The highest CPU allocator total reached during step(), above the bytes live before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    profiler.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    trace.unlink()
    return max(totals, default=0)


def measure(work: Path, shape: ModelShape, config: tuple[Any, ...], model_dir: Path) -> dict:
    """Train two steps of fixed-length rows; profile the second (optimizer state exists)."""
    import torch

    from app.catalog import CatalogEntry
    from app.schemas.spec import (
        Hyperparameters,
        LoraSpec,
        QuantizationSpec,
        TrainingSpec,
        resolve_spec,
    )
    from worker.training.config import TrainingConfig
    from worker.training.data import TokenizedDataset, TokenizedExample
    from worker.training.engine import build_run
    from worker.training.loop import train_step
    from worker.training.models import load_model

    name, batch, seq, checkpointing, bits = config
    spec = resolve_spec(
        model="bench/random-llama",
        seed=0,
        n_train_examples=4 * batch,
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=batch),
        lora=LoraSpec(),
        quantization=QuantizationSpec(bits=bits, compute_dtype="float32"),
        training=TrainingSpec(
            learning_rate=2e-4,
            max_seq_length=seq,
            gradient_checkpointing=checkpointing,
            train_on="all",
            max_steps=2,
        ),
    )
    entry = CatalogEntry(id="bench/random-llama", path=str(model_dir))
    training_config = TrainingConfig.from_spec(spec, entry, device="cpu")
    loaded = load_model(training_config, work / "models")
    rows = torch.randint(3, shape.vocab_size, (4 * batch, seq)).tolist()
    data = TokenizedDataset([TokenizedExample(r, list(r)) for r in rows], 0, 0)
    run = build_run(training_config, loaded.model, loaded.tokenizer.pad_token_id, data, None)
    train_step(run)
    run.state.global_step = 1
    gc.collect()
    static = live_tensor_bytes(run.model, run.optimizer)
    transient = peak_transient_bytes(lambda: train_step(run), work / "trace.json")
    estimate = estimate_memory(spec, shape)
    estimated = estimate.total - estimate.cuda_context
    measured = static + transient
    return {
        "config": name,
        "batch_size": batch,
        "seq_length": seq,
        "gradient_checkpointing": checkpointing,
        "bits": bits,
        "measured_static_bytes": static,
        "measured_transient_peak_bytes": transient,
        "measured_bytes": measured,
        "estimate_bytes": estimated,
        "estimate_parts": {
            "weights": estimate.linear_weights + estimate.embeddings,
            "lora_gradients_optimizer": estimate.lora_params
            + estimate.gradients
            + estimate.optimizer_state,
            "activations": estimate.activations,
        },
        "ratio": estimated / measured,
        "within_goal": abs(estimated / measured - 1) <= GOAL_WITHIN,
    }


def gpu_figures() -> list[dict[str, Any]]:
    """The H200 run's estimator comparison, if it has been run."""
    path = RESULTS_DIR / "gpu_h200.json"
    if not path.exists():
        return []
    gpu = json.loads(path.read_text())
    figures = []
    for phase in ("lora16", "qlora"):
        memory = gpu.get(phase, {}).get("memory")
        if not memory or not memory.get("measured_max_allocated_bytes"):
            continue
        ratio = memory["ratio_estimate_to_measured"]
        figures.append(
            {
                "config": f"H200 8B {phase}, b{gpu['batch_size']} x {gpu['seq_length']}, "
                "checkpointing",
                "measured_bytes": memory["measured_max_allocated_bytes"],
                "estimate_bytes": memory["estimate_without_cuda_context_bytes"],
                "ratio": ratio,
                "within_goal": abs(ratio - 1) <= GOAL_WITHIN,
                "source": "bench/results/gpu_h200.json (torch.cuda.max_memory_allocated)",
                "date": gpu.get("date"),
            }
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model (CI smoke run)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    shape = QUICK_SHAPE if args.quick else BENCH_SHAPE
    command = "python bench/estimator_accuracy.py" + (" --quick" if args.quick else "")
    results = header("estimator_accuracy", command, args.quick)
    results.update(
        libraries=library_versions("torch", "transformers", "peft", "bitsandbytes"),
        model=shape_dict(shape),
        method=__doc__.split("\n\n")[1],
        goal_within=GOAL_WITHIN,
    )
    with tempfile.TemporaryDirectory(prefix="bench-estimator-") as root:
        work = Path(root)
        model_dir = build_model_dir(work / "model", shape)
        configs = QUICK_CONFIGS if args.quick else CONFIGS
        results["cpu"] = [measure(work, shape, config, model_dir) for config in configs]
    results["gpu"] = gpu_figures()
    every = results["cpu"] + results["gpu"]
    results["goal"] = {
        "within": GOAL_WITHIN,
        "met_cpu": all(x["within_goal"] for x in results["cpu"]),
        "met_gpu": all(x["within_goal"] for x in results["gpu"]) if results["gpu"] else None,
        "worst_ratio": max((x["ratio"] for x in every), key=lambda r: abs(r - 1)),
    }
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
