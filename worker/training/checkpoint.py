"""Checkpoints a run can resume from exactly: checkpoints/step-{N}/ with a COMPLETE marker.

A checkpoint holds the adapter (PEFT format with the tokenizer, so it is also a downloadable
model), the optimizer, scheduler and grad-scaler states, every RNG state, and
trainer_state.json with the step (which fixes the data position, see batching.py). It is
written into a temporary directory and renamed into place; a directory without COMPLETE is
ignored, so a crash while writing never leaves a checkpoint that looks usable, and the next
run removes what it left. Only our own files are torch.load-ed, and with weights_only=True.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from worker.training.artifacts import save_peft_adapter

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
STAGING_PREFIX = ".step-"


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoints/step-{N} directory, or None for any other name."""
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def latest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The highest-step checkpoint that has its COMPLETE marker; None if there is none."""
    if not checkpoints_dir.is_dir():
        return None
    complete = [
        (step, path)
        for path in checkpoints_dir.iterdir()
        if (step := checkpoint_step(path)) is not None and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete)[1] if complete else None


def discard_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Remove what an interrupted save left: staging directories, and step-N directories
    without their COMPLETE marker (half written, or half replaced); the paths removed."""
    if not checkpoints_dir.is_dir():
        return []
    leftovers = [
        path
        for path in checkpoints_dir.iterdir()
        if path.name.startswith(STAGING_PREFIX)
        or (checkpoint_step(path) is not None and not (path / COMPLETE_MARKER).is_file())
    ]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def rng_states() -> dict[str, Any]:
    """Every generator training draws from (LoRA dropout uses torch's)."""
    name, keys, *rest = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": random.getstate(),
        # weights_only loading takes tensors, not numpy arrays
        "numpy": (name, torch.from_numpy(np.array(keys)), *rest),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put every generator back where the checkpoint left it."""
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    model: PeftModel,
    training_objects: dict[str, Any],
    state: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write checkpoints/step-{step}/ atomically; `training_objects` have state_dict().

    The tokenizer (with its chat template) goes into adapter/ beside the weights, so a
    checkpoint's download is as usable as the final adapter.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{step}-", dir=checkpoints_dir))
    try:
        save_peft_adapter(model, staging / ADAPTER_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging / ADAPTER_DIR)
        for name, obj in training_objects.items():
            torch.save(obj.state_dict(), staging / f"{name}.pt")
        torch.save(rng_states(), staging / "rng.pt")
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        (staging / COMPLETE_MARKER).write_text(f"{step}\n")
        target = checkpoints_dir / f"step-{step}"
        if target.exists():
            (target / COMPLETE_MARKER).unlink(missing_ok=True)  # invalid before it is half gone
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path, model: PeftModel, training_objects: dict[str, Any], device: str
) -> dict[str, Any]:
    """Restore adapter weights, optimizer/scheduler states and RNG; return trainer state."""
    adapter = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"), device=device)
    result = set_peft_model_state_dict(model, adapter)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: {unexpected}")
    for name, obj in training_objects.items():
        obj.load_state_dict(torch.load(path / f"{name}.pt", map_location=device, weights_only=True))
    restore_rng_states(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text())  # type: ignore[no-any-return]
