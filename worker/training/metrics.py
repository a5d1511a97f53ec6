"""Step metrics, the hooks that receive them, and results.csv."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

# Why training stops early: the user cancelled or paused, or the worker is shutting down.
StopReason = Literal["cancel", "pause", "shutdown"]


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """What one optimizer step reports, named as OpenAI's metrics are. With a validation file,
    valid_* are set on evaluation steps (eval_every_steps, and the last) and full_valid_* on
    checkpoint steps; both are measured on the whole validation set."""

    step: int
    total_steps: int
    epoch: float  # fractional: 1.5 = half-way through the second epoch
    train_loss: float  # mean cross-entropy per trained token over the step's micro-batches
    # Share of the step's trained tokens whose next token the model ranked first (before the
    # update, as the loss).
    train_mean_token_accuracy: float
    lr: float  # the learning rate this step used
    grad_norm: float  # before clipping to max_grad_norm
    tokens_per_second: float  # non-pad input tokens processed per second, this session
    trained_tokens: int  # cumulative tokens the loss was taken on, since step 0
    eta_seconds: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # DPO jobs: train_loss is the DPO loss, the token accuracy that of the preferred answers,
    # and these are means per pair of beta-scaled log-ratios to the reference (dpo.py).
    train_rewards_chosen: float | None = None
    train_rewards_rejected: float | None = None
    train_reward_margin: float | None = None
    train_preference_accuracy: float | None = None  # share of pairs whose chosen reward wins
    valid_rewards_chosen: float | None = None
    valid_rewards_rejected: float | None = None
    valid_reward_margin: float | None = None
    valid_preference_accuracy: float | None = None
    full_valid_reward_margin: float | None = None
    full_valid_preference_accuracy: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-ready values, e.g. for a job_event row; a supervised step's has no
        DPO names."""
        values = asdict(self)
        return {k: v for k, v in values.items() if v is not None or k not in DPO_FIELDS}


DPO_FIELDS = frozenset(
    f.name for f in fields(StepMetrics) if "reward" in f.name or "preference" in f.name
)


@dataclass
class TrainingHooks:
    """Callbacks the caller supplies; each is optional and must be a plain callable.

    should_stop is called before every step; returning a StopReason makes the engine save a
    complete checkpoint and return with status "stopped".
    """

    on_metrics: Callable[[StepMetrics], None] | None = None
    # A line for the job's events, e.g. which attention, loss and kernels the run uses.
    on_message: Callable[[str], None] | None = None
    on_checkpoint: Callable[[int, Path, StepMetrics], None] | None = None
    should_stop: Callable[[], StopReason | None] | None = None


RESULT_COLUMNS = [f.name for f in fields(StepMetrics)]


class ResultsWriter:
    """Appends one row per step to results.csv; rows past a resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = read_results(path) if resume_step > 0 and path.exists() else []
        kept = [row for row in rows if int(row["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as stream:
            # Rows of a run started before a column was renamed keep what still has a name.
            writer = csv.DictWriter(stream, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def write(self, metrics: StepMetrics) -> None:
        """Append one step's row (flushed at once: a crash loses no finished step)."""
        with self.path.open("a", newline="") as stream:
            csv.DictWriter(stream, fieldnames=RESULT_COLUMNS).writerow(metrics.as_dict())


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv as strings, in step order."""
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))
