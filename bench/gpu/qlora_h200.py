"""QLoRA on one GPU through the engine's own training step: an 8B-shaped random Llama
(hidden 4096, 32 layers, intermediate 14336, 32 heads, 8 kv heads, vocab 128256), built in
bf16 on the device and quantized on the fly to NF4 with double quantization (nothing is
written to disk).

Phases, each timed with the engine's `train_step` (worker/training/loop.py), gradient
checkpointing on, LoRA r=16 alpha=32 on every linear layer, batch 4 x 2048 tokens:
  lora16      16-bit LoRA on the bf16 base (paged 8-bit AdamW)
  qlora       the same on the NF4 + double-quant base: tokens/s, MFU, peak memory vs estimator
  packing     high-variance lengths, the engine's padding (grouped by length) vs its packing
  optimizers  paged 8-bit AdamW vs paged 32-bit AdamW vs plain torch AdamW (32-bit)

Model FLOPs per token (LoRA: the frozen base gets no weight gradient, so 4N rather than 6N):
  4 * N_frozen + 6 * N_lora + 12 * L * d * T
N_frozen: every matmul weight a token goes through (decoder linears + lm_head); N_lora: the
adapter weights; 12*L*d*T: attention scores and values, forward and backward, at sequence
length T (PaLM's convention, no causal discount). Checkpointing recomputes the forward
(2N more per token): hardware FLOPs, reported as HFU, not MFU.

    python bench/gpu/qlora_h200.py [--shape 8b|tiny] [--out DIR] [--budget-s 230]

`--shape tiny` runs the same code on the CPU in seconds (the smoke test). Writes
DIR/gpu_<shape>.json after every phase, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.catalog import CatalogEntry  # noqa: E402
from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape, estimate_memory  # noqa: E402
from app.schemas.spec import (  # noqa: E402
    Hyperparameters,
    LoraSpec,
    QuantizationSpec,
    TrainingSpec,
    resolve_spec,
)

SHAPES = {
    "8b": ModelShape(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "tiny": TINY_RANDOM_LLAMA_SHAPE,  # the built-in tiny model's shape
}
# (batch size, sequence length, timed steps per phase) per shape
SETTINGS = {"8b": (4, 2048, 10), "tiny": (2, 64, 3)}
# H200 SXM dense bf16 by the datasheet; the measured matmul rate is reported beside it.
DATASHEET_BF16_FLOPS = 989.4e12
ANCHORS_MFU = {"hf_qlora_a100": 0.21, "unsloth_a100": 0.32}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: str) -> float | None:
    """bf16 matmul FLOP/s on random 8192^3 operands (median of 10 after 3 warm-ups)."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    del a, b
    return 2 * 8192**3 / sorted(times)[len(times) // 2]


def build_model(shape: ModelShape, device: str, dtype: torch.dtype, seq: int) -> Any:
    """A random Llama of `shape`, created directly on the device in `dtype`."""
    from transformers import LlamaForCausalLM

    from worker.training.tiny import llama_config

    config = llama_config(
        shape,
        max_position_embeddings=max(seq, 2048),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def quantize_linears(model: Any, compute_dtype: torch.dtype, device: str) -> int:
    """Swap each decoder linear for bitsandbytes' Linear4bit (NF4, double quant, blocks of 64),
    quantizing the weight already on the device; returns how many were swapped."""
    import bitsandbytes as bnb

    swapped = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                quantized = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                quantized.weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    blocksize=64,
                    compress_statistics=True,
                    quant_type="nf4",
                    module=quantized,
                ).to(device)
                setattr(parent, name, quantized)
                swapped += 1
        if device == "cuda":
            torch.cuda.empty_cache()
    # What transformers sets after a 4-bit load; peft dispatches its bnb LoRA layers on it.
    model.is_loaded_in_4bit = True
    return swapped


def make_spec(shape_name: str, batch: int, seq: int, steps: int, **overrides: Any) -> Any:
    training = {
        "max_seq_length": seq,
        "max_steps": steps,
        "learning_rate": 2e-4,
        "gradient_checkpointing": True,
        "train_on": "all",
        **overrides.pop("training", {}),
    }
    return resolve_spec(
        model=f"bench/random-llama-{shape_name}",
        seed=0,
        n_train_examples=1000,
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=batch),
        lora=LoraSpec(),
        quantization=QuantizationSpec(**overrides.pop("quantization", {})),
        training=TrainingSpec(**training),
    )


def fixed_examples(n: int, seq: int, vocab: int) -> list[Any]:
    """n random sequences of exactly `seq` tokens, every token labelled."""
    from worker.training.data import TokenizedExample

    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(3, vocab, (n, seq), generator=generator).tolist()
    return [TokenizedExample(input_ids=row, labels=list(row)) for row in rows]


def varied_examples(n: int, seq: int, vocab: int) -> list[Any]:
    """High-variance lengths (log-normal, sigma 1, median seq/8, clipped to [16, seq])."""
    from worker.training.data import TokenizedExample

    rng = random.Random(2)
    examples = []
    for _ in range(n):
        length = int(min(seq, max(16, rng.lognormvariate(math.log(seq / 8), 1.0))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        examples.append(TokenizedExample(input_ids=ids, labels=list(ids)))
    return examples


def flops_per_token(shape: ModelShape, lora_params: int, seq: int) -> dict[str, float]:
    frozen = shape.linear_params + shape.vocab_size * shape.hidden_size  # linears + lm_head
    attention = 12 * shape.num_hidden_layers * shape.hidden_size * seq
    model = 4 * frozen + 6 * lora_params + attention
    return {
        "n_frozen_matmul_params": frozen,
        "n_lora_params": lora_params,
        "attention_flops": attention,
        "model_flops": model,
        "hardware_flops": model + 2 * frozen + 2 * lora_params,  # + the recomputed forward
    }


class Phase:
    """One engine run on a given model: warm-up steps, then timed steps."""

    def __init__(self, config: Any, model: Any, examples: list[Any], device: str) -> None:
        from worker.training.data import TokenizedDataset
        from worker.training.engine import build_run

        data = TokenizedDataset(examples=examples, truncated=0, dropped=0)
        self.device = device
        self.run = build_run(config, model, 0, data, None)
        self.optimizer_seconds: list[float] = []
        step = self.run.optimizer.step

        def timed_step(*args: Any, **kwargs: Any) -> Any:
            synchronize(device)
            began = time.perf_counter()
            result = step(*args, **kwargs)
            synchronize(device)
            self.optimizer_seconds.append(time.perf_counter() - began)
            return result

        self.run.optimizer.step = timed_step  # type: ignore[method-assign]

    def measure(self, warmup: int, steps: int, budget: Budget) -> dict[str, Any]:
        from worker.training.loop import train_step

        for _ in range(warmup):
            train_step(self.run)
            self.run.state.global_step += 1
        self.optimizer_seconds.clear()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, tokens, positions, losses = [], 0, 0, []
        for _ in range(steps):
            if times and budget.left() < 2 * max(times):
                break
            synchronize(self.device)
            began = time.perf_counter()
            output = train_step(self.run)
            synchronize(self.device)
            times.append(time.perf_counter() - began)
            tokens += output.tokens
            losses.append(output.loss)
            self.run.state.global_step += 1
        positions = self.positions(len(times), warmup)
        total = sum(times)
        return {
            "steps_timed": len(times),
            "step_s": sorted(times)[len(times) // 2],
            "step_s_all": times,
            "tokens": tokens,
            "tokens_per_s": tokens / total,
            "padding_share": 1 - tokens / positions if positions else 0.0,
            "optimizer_step_s": sorted(self.optimizer_seconds)[len(self.optimizer_seconds) // 2],
            "loss_first_last": [losses[0], losses[-1]],
            "peak_allocated_bytes": peak_allocated(self.device),
        }

    def positions(self, steps: int, warmup: int) -> int:
        """Token positions computed over the timed steps (padding-free: the tokens)."""
        from worker.training.batching import collate_padding_free

        run, total = self.run, 0
        for index in range(warmup, warmup + steps):
            batch = collate_padding_free(run.examples, run.plan.micro_batch(index))
            total += batch.input_ids.numel()
        return total

    def close(self) -> None:
        self.run.optimizer.zero_grad(set_to_none=True)
        del self.run
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def peak_allocated(device: str) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def lora_param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def estimator(spec: Any, shape: ModelShape, measured: int | None) -> dict[str, Any]:
    estimate = estimate_memory(spec, shape)
    without_context = estimate.total - estimate.cuda_context
    return {
        "estimate_total_bytes": estimate.total,
        "estimate_without_cuda_context_bytes": without_context,
        "parts": {k: v for k, v in asdict(estimate).items() if k != "bits_per_quantized_weight"},
        "measured_max_allocated_bytes": measured,
        "ratio_estimate_to_measured": without_context / measured if measured else None,
    }


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    temporary.replace(out)


def environment(device: str) -> dict[str, Any]:
    import bitsandbytes
    import peft
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=properties.name,
            gpu_memory_bytes=properties.total_memory,
            multiprocessors=properties.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return info


def run_lora16(ctx: dict[str, Any], model: Any) -> Any:
    """16-bit LoRA on the bf16 base; returns the base with the adapter removed."""
    from peft import get_peft_model

    from worker.training.builders import build_lora_config
    from worker.training.config import TrainingConfig
    from worker.training.models import enable_gradient_checkpointing

    spec = make_spec(
        ctx["shape_name"],
        ctx["batch"],
        ctx["seq"],
        100,
        quantization={"bits": None, "compute_dtype": ctx["dtype_name"]},
    )
    config = TrainingConfig.from_spec(spec, ctx["entry"], device=ctx["device"])
    enable_gradient_checkpointing(model)
    peft_model = get_peft_model(model, build_lora_config(config))
    if ctx["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phase = Phase(config, peft_model, ctx["fixed"], ctx["device"])
    result = phase.measure(2, ctx["steps"], ctx["budget"])
    result["memory"] = estimator(spec, ctx["shape"], result["peak_allocated_bytes"])
    phase.close()
    base = peft_model.unload()
    del peft_model
    gc.collect()
    return result, base


def build_qlora(ctx: dict[str, Any], base: Any) -> Any:
    """NF4-quantize the base in place, prepare it as the engine does, add LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from worker.training.builders import build_lora_config
    from worker.training.config import TrainingConfig
    from worker.training.models import enable_gradient_checkpointing

    began = time.perf_counter()
    swapped = quantize_linears(base, ctx["dtype"], ctx["device"])
    synchronize(ctx["device"])
    ctx["results"]["quantization"] = {"linears": swapped, "seconds": time.perf_counter() - began}
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    enable_gradient_checkpointing(base)
    spec = make_spec(ctx["shape_name"], ctx["batch"], ctx["seq"], 100)
    config = TrainingConfig.from_spec(spec, ctx["entry"], device=ctx["device"])
    return get_peft_model(base, build_lora_config(config))


def run_qlora(ctx: dict[str, Any], model: Any, optimizer: str) -> dict[str, Any]:
    from worker.training.config import TrainingConfig

    spec = make_spec(
        ctx["shape_name"], ctx["batch"], ctx["seq"], 100, training={"optimizer": optimizer}
    )
    config = TrainingConfig.from_spec(spec, ctx["entry"], device=ctx["device"])
    gc.collect()
    if ctx["device"] == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    phase = Phase(config, model, ctx["fixed"], ctx["device"])
    warmup = 2 if optimizer == "paged_adamw_8bit" else 1
    steps = ctx["steps"] if optimizer == "paged_adamw_8bit" else max(2, ctx["steps"] // 2)
    result = phase.measure(warmup, steps, ctx["budget"])
    result["memory"] = estimator(spec, ctx["shape"], result["peak_allocated_bytes"])
    phase.close()
    return result


def run_packing(ctx: dict[str, Any], model: Any) -> dict[str, Any]:
    from worker.training.config import TrainingConfig

    examples = varied_examples(64 * ctx["batch"], ctx["seq"], ctx["shape"].vocab_size)
    lengths = [len(e.input_ids) for e in examples]
    out: dict[str, Any] = {
        "lengths": {
            "n": len(lengths),
            "mean": sum(lengths) / len(lengths),
            "max": max(lengths),
            "min": min(lengths),
        }
    }
    for packing in (False, True):
        if ctx["budget"].left() < 30:
            out["skipped"] = "time budget"
            break
        spec = make_spec(
            ctx["shape_name"], ctx["batch"], ctx["seq"], 100, training={"packing": packing}
        )
        config = TrainingConfig.from_spec(spec, ctx["entry"], device=ctx["device"])
        phase = Phase(config, model, examples, ctx["device"])
        result = phase.measure(1, ctx["steps"], ctx["budget"])
        phase.close()
        out["packing" if packing else "padding_grouped"] = result
    if "packing" in out and "padding_grouped" in out:
        out["packing_speedup"] = (
            out["packing"]["tokens_per_s"] / out["padding_grouped"]["tokens_per_s"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--budget-s", type=float, default=230.0)
    args = parser.parse_args()
    budget = Budget(args.budget_s)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shape == "8b" and device != "cuda":
        raise SystemExit("the 8b shape needs a CUDA device; use --shape tiny on the CPU")
    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    dtype_name = "bfloat16" if device == "cuda" else "float32"
    shape = SHAPES[args.shape]
    batch, seq, steps = SETTINGS[args.shape]
    out = args.out / f"gpu_{args.shape}.json"
    results: dict[str, Any] = {
        "benchmark": "gpu_qlora",
        "command": f"python bench/gpu/qlora_h200.py --shape {args.shape}",
        "shape": asdict(shape),
        "batch_size": batch,
        "seq_length": seq,
        "environment": environment(device),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "formula": "MFU = tokens/s * (4*N_frozen + 6*N_lora + 12*L*d*T) / peak; "
        "N_frozen = decoder linears + lm_head; T = sequence length; "
        "HFU adds the forward recomputed by gradient checkpointing (2*N_frozen + 2*N_lora)",
        "anchors_mfu": ANCHORS_MFU,
        "datasheet_bf16_flops": DATASHEET_BF16_FLOPS,
    }
    log(f"environment: {results['environment']}")
    results["measured_bf16_matmul_flops"] = matmul_rate(device)
    log(f"matmul bf16: {results['measured_bf16_matmul_flops']}")
    ctx: dict[str, Any] = {
        "shape_name": args.shape,
        "shape": shape,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "device": device,
        "dtype": getattr(torch, dtype_name),
        "dtype_name": dtype_name,
        "budget": budget,
        "results": results,
        "entry": CatalogEntry(id=f"bench/random-llama-{args.shape}", path="unused"),
        "fixed": fixed_examples(16 * batch, seq, shape.vocab_size),
    }
    began = time.perf_counter()
    model = build_model(shape, device, ctx["dtype"], seq)
    synchronize(device)
    results["build_s"] = time.perf_counter() - began
    parameters = sum(p.numel() for p in model.parameters())
    log(f"built {parameters:,} parameters in {results['build_s']:.1f} s")
    write(results, out)

    try:
        results["lora16"], base = run_lora16(ctx, model)
        log(f"lora16: {summary(results['lora16'])}")
    except Exception as exc:  # keep measuring what still can be measured
        results["lora16"] = failure(exc)
        base = model
    write(results, out)

    model = build_qlora(ctx, base)
    del base
    flops = flops_per_token(shape, lora_param_count(model), seq)
    results["flops_per_token"] = flops
    qlora = attempt(lambda: run_qlora(ctx, model, "paged_adamw_8bit"))
    if "error" not in qlora:
        add_utilisation(qlora, flops, results["measured_bf16_matmul_flops"])
        if "step_s" in results["lora16"]:
            results["qlora_vs_lora16_step_time"] = qlora["step_s"] / results["lora16"]["step_s"]
        log(f"qlora: {summary(qlora)} mfu={qlora['mfu']:.3f}")
    results["qlora"] = qlora
    write(results, out)

    results["packing"] = attempt(lambda: run_packing(ctx, model))
    log(f"packing: speedup {results['packing'].get('packing_speedup')}")
    write(results, out)

    optimizers: dict[str, Any] = {"paged_adamw_8bit": qlora}
    for name in ("paged_adamw_32bit", "adamw_torch"):
        if budget.left() < 25:
            optimizers[name] = {"skipped": "time budget"}
            continue
        optimizers[name] = attempt(lambda name=name: run_qlora(ctx, model, name))
        if "error" not in optimizers[name]:
            log(f"{name}: {summary(optimizers[name])}")
    results["optimizers"] = {
        name: {k: v for k, v in r.items() if k not in ("step_s_all", "memory")}
        for name, r in optimizers.items()
    }
    results["total_s"] = args.budget_s - budget.left()
    write(results, out)
    log(f"done in {results['total_s']:.0f} s; wrote {out}")


def failure(exc: BaseException) -> dict[str, Any]:
    log(f"phase failed: {exc!r}")
    traceback.print_exc()
    return {"error": repr(exc)}


def attempt(phase: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = phase()
        return result
    except Exception as exc:
        return failure(exc)


def add_utilisation(
    result: dict[str, Any], flops: dict[str, float], measured: float | None
) -> None:
    rate = result["tokens_per_s"]
    result["model_tflops_per_s"] = rate * flops["model_flops"] / 1e12
    result["mfu"] = rate * flops["model_flops"] / DATASHEET_BF16_FLOPS
    result["hfu"] = rate * flops["hardware_flops"] / DATASHEET_BF16_FLOPS
    result["mfu_vs_measured_matmul"] = rate * flops["model_flops"] / measured if measured else None


def summary(result: dict[str, Any]) -> str:
    peak = result.get("peak_allocated_bytes")
    return (
        f"step {result['step_s']:.3f} s, {result['tokens_per_s']:.0f} tok/s, "
        f"peak {peak / 2**30:.2f} GiB"
        if peak
        else f"step {result['step_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
