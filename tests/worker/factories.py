"""Datasets and configs for the engine's tests (test-sized, CPU, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app.catalog import BUILTIN_MODELS, CatalogEntry
from app.schemas.spec import (
    DpoHyperparameters,
    Hyperparameters,
    LoraSpec,
    MethodType,
    QuantizationSpec,
    TrainingSpec,
    resolve_spec,
)
from worker.training.config import TrainingConfig

TINY: CatalogEntry = BUILTIN_MODELS[0]

# Four conversations repeated: a random tiny model can learn them within a few dozen steps.
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is two plus three?", "Two plus three is five."),
    ("Say good night in Spanish.", "Buenas noches."),
    ("What color is the sky?", "The sky is blue."),
]


def chat_rows(repeat: int) -> list[dict[str, Any]]:
    """System + user + assistant conversations, `repeat` copies of each fact."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
        for _ in range(repeat)
        for question, answer in FACTS
    ]


# A wrong answer to each of FACTS: the pairs' non-preferred outputs.
WRONG = ["The capital of France is Rome.", "Two plus three is nine.", "Good morning.", "Green."]


def preference_rows(repeat: int) -> list[dict[str, Any]]:
    """OpenAI's DPO lines: each fact's question, its answer preferred to a wrong one."""
    return [
        {
            "input": {
                "messages": [
                    {"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": question},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": wrong}],
        }
        for _ in range(repeat)
        for (question, answer), wrong in zip(FACTS, WRONG, strict=True)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_config(
    *,
    lora: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    n_examples: int = 16,
    method: MethodType = "supervised",
    beta: float = 0.1,
    **training: Any,
) -> TrainingConfig:
    """A resolved config for the tiny model with small, fast, test-sized defaults."""
    training = {"learning_rate": 1e-2, "max_steps": 12, "max_seq_length": 64, **training}
    hyperparameters = (
        DpoHyperparameters(n_epochs=1, batch_size=4, beta=beta)
        if method == "dpo"
        else Hyperparameters(n_epochs=1, batch_size=4)
    )
    spec = resolve_spec(
        model=TINY.id,
        seed=7,
        method=method,
        n_train_examples=n_examples,
        hyperparameters=hyperparameters,
        lora=LoraSpec(**{"r": 8, "alpha": 16, **(lora or {})}),
        quantization=QuantizationSpec(**(quantization or {})),
        training=TrainingSpec(**training),
    )
    return TrainingConfig.from_spec(spec, TINY, device="cpu")


def hub_cache(cache: Path, repo_id: str, revision: str, model_dir: Path) -> Path:
    """A Hugging Face cache holding `model_dir` as `repo_id` at commit `revision`, laid out
    as a download leaves it (snapshots/<commit>/, refs/main); returns the cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache
