"""Checkpoint bookkeeping: only complete checkpoints count, and RNG states round-trip."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch

from worker.training.checkpoint import (
    COMPLETE_MARKER,
    latest_complete_checkpoint,
    restore_rng_states,
    rng_states,
)
from worker.training.loop import TrainState


def make_checkpoint(directory: Path, step: int, complete: bool) -> Path:
    path = directory / f"step-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")
    return path


def test_latest_complete_checkpoint_ignores_ones_without_the_marker(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 5, complete=True)
    expected = make_checkpoint(tmp_path, 20, complete=True)
    make_checkpoint(tmp_path, 30, complete=False)  # a crash while writing
    (tmp_path / ".step-40-abc").mkdir()  # a temporary directory never renamed
    (tmp_path / ".step-40-abc" / COMPLETE_MARKER).write_text("40\n")
    make_checkpoint(tmp_path, 100, complete=False)
    assert latest_complete_checkpoint(tmp_path) == expected


def test_latest_complete_checkpoint_orders_steps_numerically(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 9, complete=True)
    expected = make_checkpoint(tmp_path, 10, complete=True)
    assert latest_complete_checkpoint(tmp_path) == expected


def test_no_checkpoint_directory_means_no_checkpoint(tmp_path: Path) -> None:
    assert latest_complete_checkpoint(tmp_path / "missing") is None
    make_checkpoint(tmp_path, 3, complete=False)
    assert latest_complete_checkpoint(tmp_path) is None


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(11)
    random.seed(11)
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    expected = (torch.rand(3), random.random())
    torch.rand(100)  # move the generators on
    random.random()
    restore_rng_states(torch.load(path, weights_only=True))
    again = (torch.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and again[1] == expected[1]


def test_a_state_saved_with_the_former_eval_names_restores_as_valid() -> None:
    """Checkpoints written before the OpenAI names (eval_* -> valid_*) still resume."""
    saved = {"global_step": 6, "trained_tokens": 90, "eval_loss": 1.5, "eval_token_accuracy": 0.4}
    state = TrainState.from_saved(saved)
    assert (state.global_step, state.trained_tokens) == (6, 90)
    assert (state.valid_loss, state.valid_mean_token_accuracy) == (1.5, 0.4)
    assert TrainState.from_saved(asdict(state)) == state
