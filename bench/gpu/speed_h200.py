"""Every H200 measurement of issue 20 in one run: the engine against TRL at an 8B shape, and a
65B-shaped QLoRA under a 48 GB cap.

Phase "8b" (a random Llama, hidden 4096, 32 layers, vocab 128256; NF4 + double quant, LoRA
r=16 on every linear layer, gradient checkpointing, paged 8-bit AdamW, bf16, batch 4, rows of
up to 2048 tokens). The same high-variance examples for every trainer:
  loraforge           the engine's default: padding-free batches of 4 examples
  loraforge_packing   the engine with packing (4 rows filled to 2048 tokens)
  loraforge_full      the engine on 4 x 2048-token examples (the MFU headline)
  trl_best            TRL's SFTTrainer at its best: use_liger_kernel, padding_free, packing
Each: tokens/s, MFU (bench/gpu/qlora_h200.py's formula), peak allocated memory, loss curve,
and the engine's compute path (attention, loss, Liger kernels).

Phase "65b" (a child process, so that its cap and peak are its own): hidden 8192, 80 layers,
64 heads, intermediate 22016, vocab 32000 (LLaMA-65B's shape) with the process's CUDA memory
capped at 48 GB (torch.cuda.set_per_process_memory_fraction); the base is created on the
meta device and each linear layer is created in bf16 on the GPU and quantized to NF4 at once,
so no 16-bit copy of the model ever exists; then a few engine steps with paged 8-bit AdamW.
Reports peak memory, step time and estimate_memory's figure against the measured peak.

    python bench/gpu/speed_h200.py [--tiny] [--out DIR] [--budget-s 420]

`--tiny` runs the same code with tiny shapes on the CPU in seconds (the smoke test; TRL
without Liger there). Writes DIR/gpu_speed[_tiny].json after every phase.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qlora_h200 as h200
import torch

from app.catalog import CatalogEntry
from app.memory import ModelShape

SHAPES = {
    "8b": h200.SHAPES["8b"],
    "65b": ModelShape(
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=22016,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=64,
    ),
    "tiny": h200.SHAPES["tiny"],
    "tiny65": ModelShape(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
}
# (batch, row length, timed steps, examples)
SPEED = {"8b": (4, 2048, 8, 512), "tiny": (2, 64, 3, 48)}
CAP_BYTES = 48 * 10**9  # "a 48 GB GPU"
# 65B candidates (batch, sequence), largest first: the first the estimator fits under the cap.
SHAPES_65B = [(1, 2048), (1, 1024), (1, 512)]
log = h200.log


def engine_model(shape: ModelShape, device: str, dtype: torch.dtype, seq: int) -> Any:
    """The random base, NF4-quantized, prepared as the engine prepares it (not yet LoRA)."""
    from peft import prepare_model_for_kbit_training

    from worker.training.models import enable_gradient_checkpointing

    base = h200.build_model(shape, device, dtype, seq)
    h200.quantize_linears(base, dtype, device)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    enable_gradient_checkpointing(base)
    return base


def with_lora(base: Any, config: Any) -> Any:
    """The engine's compute set-up (attention, Liger) and LoRA on `base`."""
    from peft import get_peft_model

    from worker.training.builders import build_lora_config
    from worker.training.kernels import choose_loss
    from worker.training.models import configure_compute

    compute = configure_compute(base, config.device)
    model = get_peft_model(base, build_lora_config(config))
    choose_loss(model.get_base_model(), compute, config.device)
    return model, compute


def measure_engine(
    config: Any, model: Any, compute: Any, examples: list[Any], steps: int, budget: Any
) -> dict[str, Any]:
    """Warm-up then timed engine steps (train_step): tokens/s, peak memory, loss curve."""
    from worker.training.data import TokenizedDataset
    from worker.training.engine import build_run
    from worker.training.loop import train_step

    run = build_run(config, model, 0, TokenizedDataset(examples, 0, 0), None)
    run.compute = compute
    device = config.device
    train_step(run)
    run.state.global_step += 1
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, losses = [], 0, []
    for _ in range(steps):
        if times and budget.left() < 2 * max(times):
            break
        h200.synchronize(device)
        began = time.perf_counter()
        output = train_step(run)
        h200.synchronize(device)
        times.append(time.perf_counter() - began)
        tokens += output.tokens
        losses.append(output.loss)
        run.state.global_step += 1
    run.optimizer.zero_grad(set_to_none=True)
    del run
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "steps_timed": len(times),
        "step_s": sorted(times)[len(times) // 2],
        "tokens_per_step": tokens / len(times),
        "tokens_per_s": tokens / sum(times),
        "peak_allocated_bytes": h200.peak_allocated(device),
        "loss_curve": losses,
        "compute_path": compute.as_dict(),
    }


def measure_trl(
    base: Any, config: Any, examples: list[Any], steps: int, seq: int, batch: int
) -> dict[str, Any]:
    """TRL's SFTTrainer at its best on the same examples: Liger (on CUDA), padding-free, BFD
    packing; the same LoRA config, optimizer, learning rate and checkpointing."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from worker.training.attention import flash_attention_available
    from worker.training.builders import build_lora_config
    from worker.training.kernels import liger_unavailable_reason

    device = config.device
    liger = liger_unavailable_reason(device) is None
    attention = (flash_attention_available() if device == "cuda" else None) or "sdpa"
    base.set_attn_implementation(attention)
    counted = {"tokens": 0}

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if module.training:
            counted["tokens"] += int(kwargs["input_ids"].numel())

    hook = base.model.register_forward_pre_hook(count, with_kwargs=True)
    marks: dict[str, Any] = {"times": [], "losses": [], "tokens": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            h200.synchronize(device)
            marks["began"], marks["counted"] = time.perf_counter(), counted["tokens"]
            if state.global_step == 1 and device == "cuda":  # after one warm-up step
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            h200.synchronize(device)
            if state.global_step > 1:
                marks["times"].append(time.perf_counter() - marks["began"])
                marks["tokens"].append(counted["tokens"] - marks["counted"])

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                marks["losses"].append(float(logs["loss"]))

    dataset = Dataset.from_dict({"input_ids": [list(e.input_ids) for e in examples]})
    with tempfile.TemporaryDirectory() as output_dir:
        args = SFTConfig(
            output_dir=output_dir,
            max_length=seq,
            packing=True,
            padding_free=True,
            use_liger_kernel=liger,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            bf16=device == "cuda",
            use_cpu=device != "cuda",
            optim="paged_adamw_8bit",
            learning_rate=config.training.learning_rate,
            lr_scheduler_type="constant",
            max_steps=steps + 1,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(
            model=base,
            args=args,
            train_dataset=dataset,
            processing_class=pad_tokenizer(output_dir),
            peft_config=build_lora_config(config),
            callbacks=[Timer()],
        )
        trainer.train()
    hook.remove()
    times = marks["times"]
    return {
        "steps_timed": len(times),
        "step_s": sorted(times)[len(times) // 2],
        "tokens_per_step": sum(marks["tokens"]) / len(times),
        "tokens_per_s": sum(marks["tokens"]) / sum(times),
        "peak_allocated_bytes": h200.peak_allocated(device),
        "loss_curve": marks["losses"],
        "config": {"use_liger_kernel": liger, "padding_free": True, "packing": True},
        "attention": attention,
    }


def pad_tokenizer(directory: str) -> Any:
    """The tiny model's tokenizer: the data is token ids already, TRL needs only its pad and
    eos ids (no hub, no download)."""
    from transformers import AutoTokenizer

    from worker.training.tiny import ensure_tiny_model

    return AutoTokenizer.from_pretrained(ensure_tiny_model(Path(directory) / "models"))


def add_mfu(result: dict[str, Any], shape: ModelShape, lora: int, mean_length: float) -> None:
    """MFU by qlora_h200's formula at the examples' mean length (attention is per example)."""
    flops = h200.flops_per_token(shape, lora, round(mean_length))
    achieved = result["tokens_per_s"] * flops["model_flops"]
    result["model_tflops"] = achieved / 1e12
    result["mfu"] = achieved / h200.DATASHEET_BF16_FLOPS
    result["hfu"] = result["tokens_per_s"] * flops["hardware_flops"] / h200.DATASHEET_BF16_FLOPS


def run_8b(ctx: dict[str, Any]) -> dict[str, Any]:
    """The engine (default, packing, full rows) and TRL's best, on the same model and data."""
    from worker.training.config import TrainingConfig

    shape, device, dtype = ctx["shape"], ctx["device"], ctx["dtype"]
    batch, seq, steps, n = SPEED[ctx["speed"]]
    varied = h200.varied_examples(n, seq, shape.vocab_size)
    full = h200.fixed_examples(4 * batch * (steps + 2), seq, shape.vocab_size)
    mean_varied = sum(len(e.input_ids) for e in varied) / len(varied)
    base = engine_model(shape, device, dtype, seq)
    out: dict[str, Any] = {"batch": batch, "seq": seq, "mean_example_tokens": mean_varied}

    def config(packing: bool) -> Any:
        spec = h200.make_spec(ctx["speed"], batch, seq, 100, training={"packing": packing})
        return TrainingConfig.from_spec(spec, ctx["entry"], device=device)

    model, compute = with_lora(base, config(False))
    lora = h200.lora_param_count(model)
    for name, packing, examples, mean in (
        ("loraforge", False, varied, mean_varied),
        ("loraforge_packing", True, varied, mean_varied),
        ("loraforge_full", False, full, float(seq)),
    ):
        log(f"8b: {name}")
        out[name] = attempt(
            lambda p=packing, e=examples, m=model, c=compute: measure_engine(
                config(p), m, c, e, steps, ctx["budget"]
            )
        )
        if "tokens_per_s" in out[name]:
            add_mfu(out[name], shape, lora, mean)
        h200.write(ctx["results"], ctx["out"])
    base = model.unload()
    del model
    gc.collect()
    log("8b: trl_best")
    out["trl_best"] = attempt(lambda: measure_trl(base, config(True), varied, steps, seq, batch))
    if "tokens_per_s" in out["trl_best"]:
        add_mfu(out["trl_best"], shape, lora, mean_varied)
    out["ratios"] = ratios(out)
    return out


def ratios(out: dict[str, Any]) -> dict[str, float]:
    """The issue's goals as ratios of tokens/s (when both sides ran)."""
    rate = {
        k: v["tokens_per_s"] for k, v in out.items() if isinstance(v, dict) and "tokens_per_s" in v
    }
    pairs = {
        "loraforge_packing/trl_best": ("loraforge_packing", "trl_best"),
        "loraforge/trl_best": ("loraforge", "trl_best"),
        "loraforge/loraforge_packing": ("loraforge", "loraforge_packing"),
    }
    return {name: rate[a] / rate[b] for name, (a, b) in pairs.items() if a in rate and b in rate}


def build_65b(shape: ModelShape, device: str, dtype: torch.dtype) -> Any:
    """The base on the meta device, each linear created in bf16 on `device` and quantized at
    once (one layer's weight in 16 bits at a time), the rest materialised in place."""
    import bitsandbytes as bnb
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from worker.training.tiny import llama_config

    config = llama_config(shape, max_position_embeddings=4096, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    generator = torch.Generator(device=device).manual_seed(0)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                weight = torch.empty(
                    child.out_features, child.in_features, dtype=dtype, device=device
                )
                weight.normal_(0, 0.02, generator=generator)
                quantized = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                quantized.weight = bnb.nn.Params4bit(
                    weight,
                    requires_grad=False,
                    blocksize=64,
                    compress_statistics=True,
                    quant_type="nf4",
                    module=quantized,
                ).to(device)
                setattr(parent, name, quantized)
                del weight
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.to_empty(device=device)
            torch.nn.init.ones_(norm.weight)
    for module in (model.model.embed_tokens, model.lm_head):
        module.to_empty(device=device)
        torch.nn.init.normal_(module.weight, 0, 0.02, generator=generator)
    model.model.norm.to_empty(device=device)
    torch.nn.init.ones_(model.model.norm.weight)
    with torch.device(device):
        model.model.rotary_emb = LlamaRotaryEmbedding(config)
    model.config.use_cache = False
    model.is_loaded_in_4bit = True
    return model


def run_65b(ctx: dict[str, Any]) -> dict[str, Any]:
    """QLoRA of the 65B shape under the cap: build, a few paged 8-bit AdamW steps, peak."""
    from peft import prepare_model_for_kbit_training

    from app.memory import estimate_memory
    from worker.training.config import TrainingConfig
    from worker.training.models import enable_gradient_checkpointing

    shape, device, dtype = ctx["shape"], ctx["device"], ctx["dtype"]
    out: dict[str, Any] = {"cap_bytes": CAP_BYTES}
    if device == "cuda":
        fraction = CAP_BYTES / torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(fraction)
        out["memory_fraction"] = fraction
    candidates = SHAPES_65B if ctx["speed"] == "8b" else [(1, 64)]
    for batch, seq in candidates:
        spec = h200.make_spec(ctx["speed"], batch, seq, 100)
        estimate = estimate_memory(spec, shape)
        if estimate.total <= CAP_BYTES:
            break
    out.update(batch=batch, seq=seq, estimate_total_bytes=estimate.total)
    out["estimate_fits_48gb"] = estimate.total <= CAP_BYTES
    log(f"65b: building layer by layer (batch {batch} x {seq})")
    began = time.perf_counter()
    base = build_65b(shape, device, dtype)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    enable_gradient_checkpointing(base)
    h200.synchronize(device)
    out["build_s"] = time.perf_counter() - began
    out["after_build_allocated_bytes"] = h200.peak_allocated(device)
    config = TrainingConfig.from_spec(spec, ctx["entry"], device=device)
    model, compute = with_lora(base, config)
    examples = h200.fixed_examples(batch * 6, seq, shape.vocab_size)
    out["engine"] = measure_engine(config, model, compute, examples, 4, ctx["budget"])
    if device == "cuda":
        out["peak_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    out["memory"] = h200.estimator(spec, shape, out.get("peak_max_allocated_bytes"))
    out["fits_48gb_measured"] = (
        out.get("peak_max_reserved_bytes", 0) <= CAP_BYTES if device == "cuda" else None
    )
    return out


def attempt(phase: Any) -> dict[str, Any]:
    try:
        return phase()  # type: ignore[no-any-return]
    except Exception as exc:  # keep what the other phases measure
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke)")
    parser.add_argument("--out", type=Path, default=h200.ROOT / "bench" / "results")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--phase", choices=["all", "8b", "65b"], default="all")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    speed = "tiny" if args.tiny else "8b"
    out = args.out / ("gpu_speed_tiny.json" if args.tiny else "gpu_speed.json")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    results: dict[str, Any] = {
        "benchmark": "gpu_speed",
        "quick": args.tiny,
        "command": " ".join(sys.argv),
    }
    ctx = {
        "device": device,
        "dtype": dtype,
        "speed": speed,
        "entry": CatalogEntry(id=f"bench/random-llama-{speed}", path="/nonexistent"),
        "budget": h200.Budget(args.budget_s),
        "results": results,
        "out": out,
    }
    if args.phase == "65b":  # the child: only the capped phase, to its own file
        ctx["shape"] = SHAPES["tiny65" if args.tiny else "65b"]
        print(json.dumps(attempt(lambda: run_65b(ctx))), flush=True)
        return
    results["environment"] = h200.environment(device)
    results["date"] = results["environment"]["date"]
    results["device"] = results["environment"].get("gpu", device)
    results["measured_bf16_matmul_flops"] = h200.matmul_rate(device)
    h200.write(results, out)
    if args.phase in ("all", "8b"):
        ctx["shape"] = SHAPES[speed]
        results["8b"] = attempt(lambda: run_8b(ctx))
        h200.write(results, out)
    if args.phase == "all":
        results["65b"] = child_65b(args, ctx["budget"].left())
        h200.write(results, out)
    log(f"wrote {out}")


def child_65b(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Run the 65B phase in a fresh process: its memory cap and peak are its own."""
    command = [sys.executable, __file__, "--phase", "65b", "--budget-s", str(max(60.0, seconds))]
    command += ["--tiny"] if args.tiny else []
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=max(120.0, seconds + 60)
    )
    sys.stderr.write(completed.stderr[-4000:])
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"error": f"exit {completed.returncode}", "stderr": completed.stderr[-2000:]}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


if __name__ == "__main__":
    main()
