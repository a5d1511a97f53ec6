"""A random Llama with a tokenizer, and synthetic chat datasets with chosen length profiles.

The model is saved like a Hugging Face checkpoint (safetensors + tokenizer), so every trainer
under test loads it the way a user's model is loaded. The tokenizer is the built-in tiny
model's (byte-level BPE trained on the shipped corpus, with the chat template whose
{% generation %} markers TRL reads for assistant-only loss).

Conversations are a copy task over words from the same corpus ("Copy the first k words:
..." -> those k words), so the loss can fall in a few dozen steps. Length profiles:
  high  FLAN-like: log-normal prompt and answer lengths, a long tail (CV ~1)
  low   near-constant lengths (CV ~0.1)
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.memory import ModelShape

# ~25.7M parameters with the 512-token vocabulary: 8 blocks of 512 wide, 1536 MLP, GQA 8/4.
BENCH_SHAPE = ModelShape(
    vocab_size=512,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
)
QUICK_SHAPE = ModelShape(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Wider than Llama's 0.02 for the same reason as tiny.py: a frozen random head of std 0.02
# cannot spread its logits enough for an adapter to fit anything. 0.05 at 512 wide gives
# logits of about the spread tiny.py's 0.1 gives at 128 wide.
INIT_RANGE = 0.05


@dataclass(frozen=True)
class LengthProfile:
    """Prompt and answer lengths in words: log-normal (sigma > 0) or normal (cv)."""

    name: str
    prompt_median: float
    answer_median: float
    sigma: float = 0.0  # log-normal spread
    cv: float = 0.0  # normal spread, as a fraction of the median

    def draw(self, rng: random.Random, median: float) -> int:
        if self.sigma:
            return max(1, round(rng.lognormvariate(math.log(median), self.sigma)))
        return max(1, round(rng.gauss(median, self.cv * median)))


PROFILES = {
    "high": LengthProfile("high", prompt_median=10, answer_median=4, sigma=1.1),
    "low": LengthProfile("low", prompt_median=16, answer_median=5, cv=0.1),
}


def corpus_words() -> list[str]:
    """Distinct lower-case words of the shipped corpus."""
    from worker.training.tiny import read_corpus

    words = {w.strip(".,;:!?()\"'").lower() for p in read_corpus() for w in p.split()}
    return sorted(w for w in words if w.isalpha())


def conversation(rng: random.Random, words: Sequence[str], profile: LengthProfile) -> dict:
    """One copy-task conversation with lengths drawn from the profile."""
    prompt_words = [rng.choice(words) for _ in range(profile.draw(rng, profile.prompt_median))]
    k = min(len(prompt_words), profile.draw(rng, profile.answer_median))
    return {
        "messages": [
            {"role": "user", "content": f"Copy the first {k} words: {' '.join(prompt_words)}"},
            {"role": "assistant", "content": " ".join(prompt_words[:k])},
        ]
    }


def write_dataset(path: Path, profile: LengthProfile, n: int, seed: int) -> Path:
    """n conversations as JSONL."""
    rng = random.Random(seed)
    words = corpus_words()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as stream:
        for _ in range(n):
            stream.write(json.dumps(conversation(rng, words, profile)) + "\n")
    return path


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Token-length summary: mean, coefficient of variation, median, p95, max."""
    ordered = sorted(lengths)
    mean = statistics.fmean(ordered)
    return {
        "n": len(ordered),
        "mean": mean,
        "cv": statistics.pstdev(ordered) / mean,
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def build_model_dir(directory: Path, shape: ModelShape, seed: int = 0) -> Path:
    """Save a random Llama of `shape` and the tiny model's tokenizer under `directory`."""
    import torch
    from transformers import LlamaForCausalLM

    from worker.training.tiny import build_tokenizer, llama_config

    if (directory / "config.json").exists():
        return directory
    tokenizer = build_tokenizer()
    config = llama_config(
        shape,
        max_position_embeddings=2048,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def parameter_count(shape: ModelShape) -> int:
    """All parameters of a Llama of `shape` (linears, embeddings, head, norms)."""
    return shape.linear_params + shape.embedding_params + shape.norm_params


def shape_dict(shape: ModelShape) -> dict[str, Any]:
    return {**asdict(shape), "parameters": parameter_count(shape)}
