"""The built-in tiny model: generated offline, deterministically, atomically, safetensors only."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.memory import TINY_RANDOM_LLAMA_SHAPE, ModelShape
from worker.training.tiny import ensure_tiny_model


def digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_generation_is_deterministic_and_uses_safetensors(tmp_path: Path, models_dir: Path) -> None:
    fresh = ensure_tiny_model(tmp_path / "elsewhere")
    cached = ensure_tiny_model(models_dir)
    assert digests(fresh) == digests(cached)
    names = set(digests(fresh))
    assert "model.safetensors" in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)


def test_config_has_the_shape_the_memory_estimator_uses(models_dir: Path) -> None:
    config = json.loads((ensure_tiny_model(models_dir) / "config.json").read_text())
    assert ModelShape.from_config_dict(config) == TINY_RANDOM_LLAMA_SHAPE


def test_cached_model_is_reused_not_regenerated(models_dir: Path) -> None:
    directory = ensure_tiny_model(models_dir)
    before = (directory / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(models_dir) == directory
    assert (directory / "model.safetensors").stat().st_mtime_ns == before


def test_racing_generations_agree_and_leave_no_temporary_directories(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        directories = list(pool.map(lambda _: ensure_tiny_model(tmp_path), range(3)))
    assert len(set(directories)) == 1
    assert (directories[0] / "config.json").is_file()
    assert [p.name for p in directories[0].parent.iterdir()] == [directories[0].name]


def test_tokenizer_round_trips_text_and_has_chat_special_tokens(tokenizer: object) -> None:
    text = "Good morning! The capital of France is Paris; 2 + 3 = 5."
    ids = tokenizer(text)["input_ids"]  # type: ignore[operator]
    assert ids[0] == tokenizer.bos_token_id  # type: ignore[attr-defined]
    assert tokenizer.decode(ids[1:]) == text  # type: ignore[attr-defined]
    assert len(ids) < len(text) / 2  # merges learned from the corpus, not raw bytes
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"  # type: ignore[attr-defined]
    assert "{% generation %}" in tokenizer.chat_template  # type: ignore[attr-defined]
