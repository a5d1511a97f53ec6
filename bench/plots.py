"""The PNG plots of bench/RESULTS.md, one function per plot (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "loraforge": "#1f77b4",
    "loraforge_packing": "#6baed6",
    "trl": "#d62728",
    "trl_packing": "#ff9896",
}


def save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def trainer_throughput(result: dict[str, Any], path: Path) -> None:
    """Median tokens/s per trainer and profile, with the repeats' range."""
    summary = result["summary"]
    profiles = list(summary)
    trainers = list(next(iter(summary.values())))
    figure, axes = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(trainers)
    for i, name in enumerate(trainers):
        figures = [summary[p][name] for p in profiles]
        medians = [f["tokens_per_s"] for f in figures]
        low = [f["tokens_per_s"] - f["tokens_per_s_min_max"][0] for f in figures]
        high = [f["tokens_per_s_min_max"][1] - f["tokens_per_s"] for f in figures]
        positions = [j + (i - (len(trainers) - 1) / 2) * width for j in range(len(profiles))]
        axes.bar(
            positions,
            medians,
            width,
            yerr=[low, high],
            capsize=3,
            label=name,
            color=COLORS.get(name),
        )
    axes.set_xticks(range(len(profiles)), [f"{p}-variance lengths" for p in profiles])
    axes.set_ylabel("non-pad tokens / s (median, range)")
    axes.set_title(f"QLoRA on the CPU, {result['threads']} threads, same hyperparameters")
    axes.legend(fontsize=8)
    save(figure, path)


def trainer_loss(result: dict[str, Any], path: Path) -> None:
    """Training loss per step (first repeat) against the fraction of the epoch."""
    profiles = list(result["summary"])
    figure, axes = plt.subplots(1, len(profiles), figsize=(5 * len(profiles), 3.6), squeeze=False)
    for axis, profile in zip(axes[0], profiles, strict=True):
        for run in result["runs"]:
            if run["profile"] != profile or run["repeat"] != 0 or not run["train_loss_curve"]:
                continue
            steps = [s for s, _ in run["train_loss_curve"]]
            losses = [loss for _, loss in run["train_loss_curve"]]
            axis.plot(
                [s / max(steps) for s in steps],
                losses,
                label=run["name"],
                color=COLORS.get(run["name"]),
            )
        axis.set_title(f"{profile}-variance profile (repeat 0)")
        axis.set_xlabel("fraction of the epoch")
        axis.set_ylabel("training loss per label token")
        axis.legend(fontsize=7)
    save(figure, path)


def bits_per_weight(result: dict[str, Any], path: Path) -> None:
    """Bits per weight of each quantized tensor against its size, with QLoRA's figures."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for block in ("large_layer", "bench_model"):
        for key, marker in (("double_quant", "o"), ("no_double_quant", "x")):
            layers = result[block][key]["per_layer"]
            axes.scatter(
                [x["weights"] for x in layers],
                [x["bits_per_weight"] for x in layers],
                marker=marker,
                label=f"{block.replace('_', ' ')}, {key.replace('_', ' ')}",
            )
    for name, bits in result["reference_bits"].items():
        axes.axhline(bits, linestyle="--", linewidth=0.8, color="grey")
        axes.annotate(f"{name.replace('_', ' ')} {bits:.3f}", (1.2e4, bits + 0.01), fontsize=7)
    axes.axvline(1e6, linestyle=":", color="grey", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("weights in the tensor")
    axes.set_ylabel("stored bits per weight")
    axes.set_title("NF4 storage counted from bitsandbytes' tensors")
    axes.legend(fontsize=7)
    save(figure, path)


def estimator(result: dict[str, Any], path: Path) -> None:
    """Estimate against measured bytes per configuration."""
    items = result["cpu"] + result["gpu"]
    labels = [x["config"] for x in items]
    figure, axes = plt.subplots(figsize=(8, 0.6 * len(items) + 1.5))
    ratios = [x["ratio"] for x in items]
    axes.barh(labels, ratios, color=["#2ca02c" if x["within_goal"] else "#d62728" for x in items])
    for bound in (1 - result["goal_within"], 1.0, 1 + result["goal_within"]):
        axes.axvline(bound, linestyle="--" if bound != 1 else "-", color="grey", linewidth=0.8)
    axes.set_xlabel("estimate / measured")
    axes.set_title("Memory estimator (green: within the goal)")
    axes.tick_params(axis="y", labelsize=7)
    save(figure, path)


def api_latency(result: dict[str, Any], path: Path) -> None:
    """p50/p90/p99 latency per endpoint, requests/s on the labels."""
    load = result["load"]
    names = list(load)
    figure, axes = plt.subplots(figsize=(7, 3.6))
    width = 0.25
    for i, q in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        axes.bar(
            [j + (i - 1) * width for j in range(len(names))],
            [load[n][q] for n in names],
            width,
            label=q.replace("_ms", ""),
        )
    axes.set_xticks(
        range(len(names)), [f"{n}\n{load[n]['requests_per_s']:.0f} req/s" for n in names]
    )
    axes.set_ylabel("latency, ms")
    axes.set_title(
        f"API, {result['load_generator']['name']}, "
        f"{result['load_generator']['connections']} connections"
    )
    axes.legend()
    save(figure, path)


def gpu(result: dict[str, Any], path: Path) -> None:
    """H200: step times of the phases and optimizers, packing vs padding tokens/s."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    phases = {"16-bit LoRA": result.get("lora16", {}), "QLoRA": result.get("qlora", {})}
    phases.update(
        {
            f"QLoRA, {k}": v
            for k, v in result.get("optimizers", {}).items()
            if k != "paged_adamw_8bit"
        }
    )
    measured = {k: v["step_s"] for k, v in phases.items() if "step_s" in v}
    left.barh(list(measured), list(measured.values()), color="#1f77b4")
    left.set_xlabel(f"step time, s (batch {result['batch_size']} x {result['seq_length']})")
    left.tick_params(axis="y", labelsize=8)
    packing = result.get("packing", {})
    if "packing" in packing:
        modes = {"grouped padding": packing["padding_grouped"], "packing": packing["packing"]}
        right.bar(list(modes), [m["tokens_per_s"] for m in modes.values()], color="#2ca02c")
        right.set_ylabel("non-pad tokens / s")
        right.set_title("high-variance lengths")
    figure.suptitle("8B-shaped QLoRA on one H200 (engine train_step)")
    save(figure, path)
