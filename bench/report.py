"""Write bench/RESULTS.md and its PNG plots from the JSON files in bench/results/.

    python bench/report.py [--results-dir bench/results] [--out bench/RESULTS.md]

Every figure on the page is read from a result file; the page says which command produced
it, when, and how loaded the machine was. Plots use matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import plots
from bench.common import RESULTS_DIR, ROOT

TRAINER_LABELS = {
    "loraforge": "loraforge (padding-free, grouped by length)",
    "loraforge_packing": "loraforge, packing",
    "trl": "TRL SFTTrainer, defaults",
    "trl_packing": "TRL SFTTrainer, packing",
}


def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:,.2f} GiB"


def met(flag: Any) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**not met**")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(result: dict[str, Any]) -> str:
    load = result.get("load_average_start"), result.get("load_average_end")
    loads = " -> ".join(" ".join(f"{x:.2f}" for x in pair) for pair in load if pair)
    machine = result.get("machine") or {}
    where = (
        f"{machine.get('cpus')} CPUs ({machine.get('cpu_model')})"
        if machine
        else result.get("device", "")
    )
    quick = (
        " (**quick setting: smoke-test sizes, not figures to quote**)"
        if result.get("quick")
        else ""
    )
    return f"Command: `{result.get('command')}`{quick}  \nRun: {result.get('date')} on {where}" + (
        f"; load average (1/5/15 min) at start -> end: {loads}" if loads else ""
    )


def trainer_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    summary, ratios = result["summary"], result["ratios"]
    parts = [
        "## Trainer: loraforge vs TRL SFTTrainer (CPU)",
        provenance(result),
        f"Model: random Llama, {number(result['model']['parameters'])} parameters "
        f"({result['model']['num_hidden_layers']} layers, hidden {result['model']['hidden_size']}"
        f"); {result['threads']} threads; medians of {result['repeats']} interleaved repeats. "
        "Hyperparameters, the same for every trainer: "
        + ", ".join(f"{k} {v}" for k, v in result["hyperparameters"].items())
        + ".",
    ]
    for profile, data in result["data"].items():
        lengths = data["token_lengths"]
        parts.append(
            f"Profile **{profile}**: {data['n_train']} training examples, tokens per example "
            f"mean {lengths['mean']:.0f}, CV {lengths['cv']:.2f}, p50 {lengths['p50']}, "
            f"p95 {lengths['p95']}, max {lengths['max']}; {data['n_eval']} held-out examples."
        )
    cpu = all("tokens_per_cpu_s" in t for trainers in summary.values() for t in trainers.values())
    headers = ["profile", "trainer", "tokens/s", "range", "label tokens/s"]
    headers += ["tokens/CPU-s"] if cpu else []
    headers += [
        "step s",
        "tokens/step",
        "padding",
        "optimizer share",
        "peak RSS",
        "held-out loss",
        "final train loss",
    ]
    rows = []
    for profile, trainers in summary.items():
        for name, t in trainers.items():
            low, high = t["tokens_per_s_min_max"]
            row = [
                profile,
                TRAINER_LABELS.get(name, name),
                number(t["tokens_per_s"], 1),
                f"{low:.0f}-{high:.0f}",
                number(t["label_tokens_per_s"], 1),
            ]
            row += [number(t["tokens_per_cpu_s"], 1)] if cpu else []
            row += [
                number(t["step_s_median"]),
                number(t["tokens_per_step"], 0),
                f"{t['padding_share']:.1%}",
                f"{t.get('optimizer_share', 0):.0%}",
                mib(t["peak_rss_bytes"]),
                number(t["eval_loss"], 3),
                number(t["final_train_loss"], 3),
            ]
            rows.append(row)
    parts.append(table(headers, rows))
    ratio_rows = []
    for profile, values in ratios.items():
        pairs = [name.removesuffix("_eval_loss") for name in values if name.endswith("_eval_loss")]
        for pair in pairs:
            row = [
                profile,
                pair.replace("/", " / "),
                number(values[f"{pair}_tokens_per_s"]),
                number(values[f"{pair}_label_tokens_per_s"]),
            ]
            row += [number(values.get(f"{pair}_tokens_per_cpu_s"))] if cpu else []
            row += [number(values[f"{pair}_eval_loss"], 3), number(values[f"{pair}_peak_rss"])]
            ratio_rows.append(row)
    ratio_headers = ["profile", "pair", "tokens/s", "label tokens/s"]
    ratio_headers += ["tokens/CPU-s"] if cpu else []
    ratio_headers += ["held-out loss", "peak RSS"]
    parts.append("Ratios of medians (first over second):\n\n" + table(ratio_headers, ratio_rows))
    share = result.get("machine_share")
    if share:
        share_rows = [
            [
                profile,
                TRAINER_LABELS.get(name, name),
                f"{x['model_flops_per_s'] / 1e9:.2f}",
                f"{x['share_of_matmul_peak']:.1%}",
                f"{x['hardware_share_of_matmul_peak']:.1%}",
            ]
            for profile, trainers in share["profiles"].items()
            for name, x in trainers.items()
        ]
        parts.append(
            f"Share of the machine's measured matmul peak (fp32 1024^3 on {share['threads']} "
            f"threads: {share['matmul_fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, measured after the "
            "runs) that each training loop reaches:\n\n"
            + table(
                ["profile", "trainer", "model GFLOP/s", "model share", "hardware share"],
                share_rows,
            )
        )
    plan_rows = [
        [
            profile,
            plan.replace("_", " "),
            number(x["rows"]),
            number(x["steps"]),
            f"{x['padding_share']:.1%}",
            f"{x['padded_share']:.1%}" if "padded_share" in x else "n/a",
        ]
        for profile, data in result["data"].items()
        for plan, x in data.get("batch_plans", {}).items()
    ]
    if plan_rows:
        parts.append(
            "The engine's batch plans for these files, computed from the token lengths with "
            "its own `build_plan` (grouped by length; packed by best-fit decreasing, then "
            "grouped) and its padding-free collation, for one epoch (padded: what padding each "
            "micro-batch's rows to the longest would have cost):\n\n"
            + table(["profile", "plan", "rows", "steps/epoch", "padding", "padded"], plan_rows)
        )
    parts.append("\n".join(f"- {note}" for note in result.get("notes", [])))
    for name, draw in (
        ("trainer_throughput.png", plots.trainer_throughput),
        ("trainer_loss.png", plots.trainer_loss),
    ):
        draw(result, images / name)
        parts.append(f"![{name}]({name})")
    run_rows = [
        [
            r["profile"],
            r["name"],
            r["repeat"],
            number(r["tokens_per_s"], 1),
            " ".join(f"{x:.2f}" for x in r.get("load_average", [])),
        ]
        for r in result["runs"]
    ]
    parts.append(
        "Every run, in the order run, with the load average when it ended (our own run adds "
        "about 2):\n\n" + table(["profile", "trainer", "repeat", "tokens/s", "load"], run_rows)
    )
    goal_rows = [
        [
            "trainer",
            f"{name} ({g.get('compared', '')})",
            number(g["goal"]),
            goal_value(g["value"]),
            met(g["met"]),
        ]
        for name, g in result.get("goals", {}).items()
    ]
    return "\n\n".join(parts), goal_rows


def goal_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {number(v, 3)}" for k, v in value.items())
    return number(value, 3)


def memory_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    large, bench = result["large_layer"], result["bench_model"]
    rows = []
    for label, block in (("8B-shaped layer", large), ("benchmark model", bench)):
        for key, title in (("double_quant", "NF4 + double quant"), ("no_double_quant", "NF4")):
            s = block[key]
            rows.append(
                [
                    label,
                    title,
                    number(s["weights"]),
                    number(s["bits_per_weight_all"], 3),
                    number(s["min_bits_large_tensors"], 3),
                    number(s["max_bits_large_tensors"], 3),
                ]
            )
    model, optimizer, adapter = result["model"], result["optimizer"], result["adapter"]
    at_8b = result["adapter_8b_computed"]
    parts = [
        "## Memory: NF4 storage, optimizer state, adapter size",
        provenance(result),
        "Bits per weight counted from the real tensors (packed 4-bit weight, absmax, nested "
        "absmax, codes and offset) of layers quantized through the engine's loader. QLoRA's "
        f"figures: {result['reference_bits']['qlora_double_quant']:.3f} with double quant, "
        f"{result['reference_bits']['qlora_no_double_quant']:.3f} without.",
        table(
            [
                "model",
                "quantization",
                "weights",
                "bits/weight (all layers)",
                "min bits (>= 1M)",
                "max bits (>= 1M)",
            ],
            rows,
        ),
        table(
            ["quantity", "value"],
            [
                [
                    "benchmark model: NF4 + DQ bytes (parameters, buffers, quant state)",
                    mib(model["nf4_double_quant_bytes"]),
                ],
                [
                    "benchmark model: fp32 / bf16 bytes",
                    f"{mib(model['fp32_bytes'])} / {mib(model['bf16_bytes'])}",
                ],
                ["LoRA parameters (r=16, all linear)", number(optimizer["lora_parameters"])],
                [
                    "paged 8-bit AdamW state after one step",
                    f"{mib(optimizer['paged_adamw_8bit_state_bytes'])} "
                    f"({optimizer['bytes_per_parameter']:.2f} bytes/parameter; 32-bit AdamW: 8)",
                ],
                [
                    "adapter file vs base file (fp32)",
                    f"{adapter['adapter_file_bytes'] / 2**20:.1f} MiB vs "
                    f"{mib(adapter['base_file_bytes_fp32'])} "
                    f"({adapter['adapter_share_of_base_file']:.1%})",
                ],
                [
                    "8B shape, computed: fp32 adapter vs bf16 base",
                    f"{gib(at_8b['adapter_bytes_fp32'])} vs {gib(at_8b['base_bytes_bf16'])} "
                    f"({at_8b['adapter_share_of_base']:.1%})",
                ],
            ],
        ),
        model.get("note", ""),
    ]
    plots.bits_per_weight(result, images / "quant_bits.png")
    parts.append("![quant_bits.png](quant_bits.png)")
    goal = result["goal"]
    goal_rows = [
        [
            "memory",
            "bits/weight, tensors >= 1M weights",
            f"<= {goal['max_bits_per_weight_large_tensors']}",
            number(goal["value"], 3),
            met(goal["met"]),
        ]
    ]
    return "\n\n".join(parts), goal_rows


def estimator_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    rows = [
        [
            x["config"],
            "CPU" if "source" not in x else "H200",
            gib(x["measured_bytes"]),
            gib(x["estimate_bytes"]),
            number(x["ratio"], 3),
            met(x["within_goal"]),
        ]
        for x in result["cpu"] + result["gpu"]
    ]
    parts = [
        "## Memory estimator vs measured",
        provenance(result),
        result.get("method", ""),
        table(
            [
                "configuration",
                "where",
                "measured",
                "estimate",
                "estimate / measured",
                f"within {result['goal_within']:.0%}",
            ],
            rows,
        ),
    ]
    plots.estimator(result, images / "estimator.png")
    parts.append("![estimator.png](estimator.png)")
    goal = result["goal"]
    goal_rows = [
        [
            "estimator",
            "CPU configurations within 15%",
            "all",
            number(goal["worst_ratio"], 3),
            met(goal["met_cpu"]),
        ],
        ["estimator", "H200 configurations within 15%", "all", "see table", met(goal["met_gpu"])],
    ]
    return "\n\n".join(parts), goal_rows


def api_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    generator = result["load_generator"]
    up = result["upload"]
    rows = [
        [
            name,
            number(x["requests_per_s"], 0),
            number(x["p50_ms"], 1),
            number(x["p90_ms"], 1),
            number(x["p99_ms"], 1),
            number(x["max_ms"], 1),
            x["non_2xx"] + x["socket_errors"],
        ]
        for name, x in result["load"].items()
    ]
    parts = [
        "## Service: API throughput and latency",
        provenance(result),
        f"Server: {result['server']['command']}, options {result['server']['uvicorn_options']}; "
        f"{result['server']['database']}; broker {result['server']['broker']}; settings "
        f"{result['server'].get('settings')}. Load generator: {generator['name']}, "
        f"{generator['threads']} thread(s), {generator['connections']} connections, "
        f"{generator['duration_s']} s after a {generator['warm_up_s']} s warm-up, on the same "
        "2 cores as the server and Postgres.",
        table(["endpoint", "requests/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"], rows),
        f"Upload: {up['bytes'] / 2**20:,.0f} MiB JSONL ({number(up['examples'])} examples) with "
        f"{up['client']}: {up['seconds']:.1f} s, **{up['mb_per_s']:.1f} MB/s** including "
        f"validation (HTTP {up['http_status']}); API process VmRSS "
        f"{up['rss_before_kib'] / 1024:.0f}"
        f" MiB before, peak {up['rss_peak_sampled_kib'] / 1024:.0f} MiB sampled every 20 ms "
        f"({up['rss_samples']} samples), VmHWM {up['hwm_before_kib'] / 1024:.0f} -> "
        f"{up['hwm_after_kib'] / 1024:.0f} MiB: growth **{up['growth_mib']:.1f} MiB**.",
    ]
    variant = result.get("h11_variant")
    if variant:
        rows = [
            [
                name,
                number(x["requests_per_s"], 0),
                number(result["load"][name]["requests_per_s"], 0),
                number(x["p99_ms"], 1),
                number(result["load"][name]["p99_ms"], 1),
            ]
            for name, x in variant["load"].items()
        ]
        parts.append(
            "For comparison, the same app and database under uvicorn's pure-Python HTTP parser "
            f"(`{variant['server']}`) instead of `loraforge api`'s (httptools, head capped):\n\n"
            + table(
                [
                    "endpoint",
                    "req/s h11",
                    "req/s loraforge api",
                    "p99 ms h11",
                    "p99 ms loraforge api",
                ],
                rows,
            )
        )
    plots.api_latency(result, images / "api_latency.png")
    parts.append("![api_latency.png](api_latency.png)")
    goal_rows = [
        ["service", name.replace("_", " "), g["goal"], number(g["value"], 1), met(g["met"])]
        for name, g in result["goals"].items()
    ]
    return "\n\n".join(parts), goal_rows


def job_latency_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    rows = []
    for stack in ("redis", "embedded"):
        for what in ("post_to_running", "cancel_to_cancelled"):
            x = result[stack][what]
            rows.append(
                [
                    stack,
                    what.replace("_", " "),
                    x["n"],
                    number(x["p50_s"], 3),
                    number(x["p90_s"], 3),
                    number(x["max_s"], 3),
                ]
            )
    parts = [
        "## Service: POST -> running and cancel latency, Redis vs embedded broker",
        provenance(result),
        result.get("method", ""),
        table(["broker", "latency", "n", "p50 s", "p90 s", "max s"], rows),
    ]
    goals = result.get("goals", {})
    goal_rows = [
        [
            "job latency",
            "Redis POST -> running p50",
            f"<= {goals.get('redis_p50_s')} s",
            number(result["redis"]["post_to_running"]["p50_s"], 3),
            met(result["redis"]["post_to_running"]["p50_s"] <= goals.get("redis_p50_s", 0)),
        ],
        [
            "job latency",
            "embedded POST -> running p50",
            f"<= {goals.get('embedded_p50_s')} s",
            number(result["embedded"]["post_to_running"]["p50_s"], 3),
            met(result["embedded"]["post_to_running"]["p50_s"] <= goals.get("embedded_p50_s", 0)),
        ],
    ]
    return "\n\n".join(parts), goal_rows


def gpu_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    env, shape = result["environment"], result["shape"]
    q, l16 = result.get("qlora", {}), result.get("lora16", {})
    packing = result.get("packing", {})
    optimizers = result.get("optimizers", {})
    flops = result.get("flops_per_token", {})
    rows = []
    for label, phase in (("16-bit LoRA (bf16 base)", l16), ("QLoRA (NF4 + DQ base)", q)):
        if "step_s" not in phase:
            rows.append([label, phase.get("error", "not run"), "", "", "", ""])
            continue
        memory = phase.get("memory", {})
        rows.append(
            [
                label,
                number(phase["step_s"], 3),
                number(phase["tokens_per_s"], 0),
                gib(memory.get("measured_max_allocated_bytes")),
                gib(memory.get("estimate_without_cuda_context_bytes")),
                number(memory.get("ratio_estimate_to_measured"), 3),
            ]
        )
    parts = [
        "## GPU: 8B-shaped QLoRA on one H200",
        f"Command: `{result.get('command')}`  \nRun: {result.get('date')} on "
        f"{result.get('device')}; torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, peft {env.get('peft')}, "
        f"bitsandbytes {env.get('bitsandbytes')}. Log: `bench/gpu/h200_run.log`.",
        f"Random Llama, hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"intermediate {shape['intermediate_size']}, {shape['num_attention_heads']}/"
        f"{shape['num_key_value_heads']} heads, vocab {shape['vocab_size']}, built "
        "in bf16 on the GPU and quantized there (nothing written to disk); the engine's own "
        f"train_step, gradient checkpointing on, LoRA r=16 on all linear layers, batch "
        f"{result['batch_size']} x {result['seq_length']} tokens, paged 8-bit AdamW.",
        table(
            [
                "phase",
                "step s (median)",
                "tokens/s",
                "peak allocated",
                "estimate (no CUDA context)",
                "estimate / measured",
            ],
            rows,
        ),
    ]
    if "mfu" in q:
        parts.append(
            f"QLoRA: **{q['model_tflops_per_s']:.0f} model TFLOP/s, MFU {q['mfu']:.1%}** of the "
            f"H200's {result['datasheet_bf16_flops'] / 1e12:.0f} dense bf16 TFLOP/s (datasheet); "
            f"{q['mfu_vs_measured_matmul']:.1%} of the "
            f"{result['measured_bf16_matmul_flops'] / 1e12:.0f} "
            f"TFLOP/s an 8192^3 bf16 matmul reached in the same run; HFU {q['hfu']:.1%}. Formula: "
            f"{result['formula']} ({flops.get('model_flops', 0) / 1e9:.1f} GFLOP per token at "
            f"T={result['seq_length']}). Anchors: plain HF QLoRA about "
            f"{result['anchors_mfu']['hf_qlora_a100']:.0%} MFU on an A100, Unsloth about "
            f"{result['anchors_mfu']['unsloth_a100']:.0%}. QLoRA step / 16-bit LoRA step: "
            f"{result.get('qlora_vs_lora16_step_time', 0):.2f}."
        )
    if "packing" in packing:
        pad, pack = packing["padding_grouped"], packing["packing"]
        parts.append(
            f"Packing vs padding on high-variance lengths ({packing['lengths']['n']} sequences, "
            "mean "
            f"{packing['lengths']['mean']:.0f} tokens, max {packing['lengths']['max']}): grouped "
            f"padding {pad['tokens_per_s']:.0f} tokens/s ({pad['tokens_per_step']:.0f} "
            "tokens/step, "
            f"padding {pad['padding_share']:.1%}), packing {pack['tokens_per_s']:.0f} tokens/s "
            f"({pack['tokens_per_step']:.0f} tokens/step, padding {pack['padding_share']:.1%}): "
            f"**{packing['packing_speedup']:.2f}x**."
            if "tokens_per_step" in pad
            else f"Packing vs padding: grouped padding {pad['tokens_per_s']:.0f} tokens/s, packing "
            f"{pack['tokens_per_s']:.0f} tokens/s: **{packing['packing_speedup']:.2f}x** (padding "
            f"{pad['padding_share']:.1%} vs {pack['padding_share']:.1%})."
        )
    if optimizers:
        parts.append(
            table(
                ["optimizer", "step s", "optimizer.step s", "peak allocated"],
                [
                    [
                        name,
                        number(o.get("step_s"), 3),
                        number(o.get("optimizer_step_s"), 4),
                        gib(o.get("peak_allocated_bytes")),
                    ]
                    for name, o in optimizers.items()
                ],
            )
        )
    plots.gpu(result, images / "gpu_h200.png")
    parts.append("![gpu_h200.png](gpu_h200.png)")
    goal_rows = []
    if "mfu" in q:
        goal_rows.append(
            [
                "GPU",
                "QLoRA MFU vs anchors (HF 21%, Unsloth 32%)",
                "reference",
                f"{q['mfu']:.1%}",
                "n/a",
            ]
        )
    return "\n\n".join(parts), goal_rows


def api_compare_section(result: dict[str, Any], _images: Path) -> tuple[str, list[list[Any]]]:
    rows = [
        [
            name,
            number(x["base_requests_per_s"], 0),
            number(x["new_requests_per_s"], 0),
            f"{x['ratio_requests_per_s']:.2f}x",
            number(x["base_p99_ms"], 1),
            number(x["new_p99_ms"], 1),
        ]
        for name, x in result["summary"].items()
    ]
    generator = result["load_generator"]
    parts = [
        "## Service: this tree against an earlier revision, side by side",
        provenance(result),
        f"`loraforge api` from revision `{result['base']['commit'][:10]}` (base) and from this "
        f"tree (new), in turn against one Postgres database, {generator['repeats']} rounds of "
        f"{generator['name']} with {generator['connections']} connections for "
        f"{generator['duration_s']} s per endpoint; medians of the rounds.",
        table(
            ["endpoint", "req/s base", "req/s new", "new/base", "p99 ms base", "p99 ms new"],
            rows,
        ),
    ]
    return "\n\n".join(parts), []


def api_instructions_section(result: dict[str, Any], _images: Path) -> tuple[str, list[list[Any]]]:
    compared = "base" in result
    rows = [
        [name, f"{x['base_instructions']:,}" if compared else "", f"{x['new_instructions']:,}",
         f"{x['ratio']:.2f}x" if compared else ""]
        for name, x in result["summary"].items()
    ]  # fmt: skip
    method = result["method"]
    against = f"revision `{result['base']['commit'][:10]}` (base) and " if compared else ""
    parts = [
        "## Service: instructions per request",
        provenance(result),
        f"CPU instructions one request costs, counted by {method['tool']}, for {against}this "
        f"tree (new): {method['server']}; {method['per_request']} with N1, N2 = "
        f"{method['requests'][0]}, {method['requests'][1]}. Unlike requests/s, these counts do "
        "not move with the machine's load; they leave out the kernel's side of each round trip.",
        table(["endpoint", "base", "new", "new/base"], rows),
    ]
    return "\n\n".join(parts), []


def inference_section(result: dict[str, Any], _images: Path) -> tuple[str, list[list[Any]]]:
    server, baseline, ratios = result["server"], result["transformers"], result["ratios"]
    labels = {
        "one_stream": "1 stream, adapter",
        "eight_streams_one_adapter": "8 streams, one adapter",
        "eight_streams_two_adapters": "8 streams, two adapters",
        "eight_streams_base": "8 streams, base model",
    }
    rows = [
        [
            "loraforge inference",
            label,
            number(server[key]["ttft_median_s"], 3),
            number(server[key]["tokens_per_s"], 1),
        ]
        for key, label in labels.items()
    ]
    rows.append(
        [
            "transformers generate",
            "1 generation, adapter",
            number(baseline["one_stream"]["ttft_median_s"], 3),
            number(baseline["one_stream"]["tokens_per_s"], 1),
        ]
    )
    rows.append(
        [
            "transformers generate",
            "8 generations in a row",
            "",
            number(baseline["eight_in_a_row"]["tokens_per_s"], 1),
        ]
    )
    adapters = result["adapters"]
    parts = [
        "## Inference: loraforge inference vs transformers generate (tiny model, CPU)",
        provenance(result),
        table(["server", "load", "first token s (median)", "tokens/s"], rows),
        table(
            ["ratio", "value"],
            [[name.replace("_", " "), number(value, 2)] for name, value in ratios.items()],
        ),
        f"Loading an adapter: {number(adapters['load_median_s'], 3)} s (median of "
        f"{adapters['adapters_loaded']}); server memory per loaded adapter "
        f"{adapters['rss_growth_per_adapter_bytes'] / 1024:,.0f} KiB (adapter file "
        f"{adapters['adapter_file_bytes'] / 1024:,.0f} KiB).",
    ]
    return "\n\n".join(parts), []


def gpu_speed_section(result: dict[str, Any], images: Path) -> tuple[str, list[list[Any]]]:
    """bench/gpu/speed_h200.py: the engine vs TRL's best at 8B, and 65B under 48 GB."""
    speed, capped = result.get("8b", {}), result.get("65b", {})
    rows = [
        [
            name,
            number(x.get("tokens_per_s"), 0),
            f"{x['mfu']:.1%}" if "mfu" in x else "n/a",
            gib(x.get("peak_allocated_bytes")),
            number((x.get("loss_curve") or [None])[-1], 3),
            x.get("error", ""),
        ]
        for name, x in speed.items()
        if isinstance(x, dict) and name != "ratios"
    ]
    parts = [
        "## GPU: padding-free engine vs TRL's best, 8B shape; 65B shape under 48 GB",
        provenance(result),
        table(["trainer", "tokens/s", "MFU", "peak allocated", "last loss", "error"], rows),
        "Ratios: " + ", ".join(f"{k} {number(v, 2)}" for k, v in speed.get("ratios", {}).items()),
        f"65B shape: batch {capped.get('batch')} x {capped.get('seq')}, peak allocated "
        f"{gib(capped.get('peak_max_allocated_bytes'))} (reserved "
        f"{gib(capped.get('peak_max_reserved_bytes'))}), estimate "
        f"{gib(capped.get('estimate_total_bytes'))}, step "
        f"{number(capped.get('engine', {}).get('step_s'), 2)} s.",
    ]
    return "\n\n".join(parts), []


SECTIONS: list[tuple[str, Callable[[dict[str, Any], Path], tuple[str, list[list[Any]]]]]] = [
    ("trainer_vs_trl", trainer_section),
    ("quant_memory", memory_section),
    ("estimator_accuracy", estimator_section),
    ("api_load", api_section),
    ("api_compare", api_compare_section),
    ("api_instructions", api_instructions_section),
    ("job_latency", job_latency_section),
    ("inference", inference_section),
    ("gpu_h200", gpu_section),
    ("gpu_speed", gpu_speed_section),
]


def build(results_dir: Path, out: Path) -> str:
    images = out.parent
    images.mkdir(parents=True, exist_ok=True)
    sections, goals, missing = [], [], []
    for name, render in SECTIONS:
        path = results_dir / f"{name}.json"
        if not path.exists():
            missing.append(name)
            continue
        text, goal_rows = render(json.loads(path.read_text()), images)
        sections.append(text)
        goals += goal_rows
    head = [
        "# Benchmarks",
        "Generated by `python bench/report.py` from `bench/results/*.json`; do not edit by hand. "
        "`make bench` reruns every CPU benchmark and regenerates this page; the GPU section "
        "comes from one run of `bench/gpu/qlora_h200.py` on a lent H200, made before batches were "
        "padding-free; `bench/gpu/speed_h200.py` (the padding-free engine against TRL's best, "
        "and a 65B shape under 48 GB) is written and smoke-tested on the CPU, its H200 run "
        "pending. Each section names "
        "the command, the date and the machine's load average (other work shared these 2 cores "
        "unless the load says otherwise).",
        "## Goals",
        table(["area", "goal", "target", "measured", "status"], goals),
    ]
    if missing:
        head.append("Not run yet: " + ", ".join(f"`{m}`" for m in missing) + ".")
    text = "\n\n".join(head + sections) + "\n"
    out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    build(args.results_dir, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
