"""One optimizer step and one evaluation pass: the mechanics under engine.run_training."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from peft import PeftModel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase

from worker.training.batching import Batch, BatchPlan, collate, split_passes
from worker.training.config import TrainingConfig
from worker.training.data import IGNORE_INDEX, TokenizedExample
from worker.training.models import inference_mode


@dataclass
class TrainState:
    """What a checkpoint must carry besides tensors; the step is also the data position."""

    global_step: int = 0
    trained_tokens: int = 0
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    lr: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainState:
        """The state a checkpoint stored, by its current names or those it had before."""
        renamed = {"eval_loss": "valid_loss", "eval_token_accuracy": "valid_mean_token_accuracy"}
        values = {renamed.get(key, key): value for key, value in saved.items()}
        known = {known_field.name for known_field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class StepOutput:
    loss: float
    token_accuracy: float  # share of the trained tokens whose next token ranked first
    lr: float
    grad_norm: float
    tokens: int
    trained_tokens: int


@dataclass
class TrainingRun:
    """The live objects of one run, built by the engine."""

    config: TrainingConfig
    model: PeftModel
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    plan: BatchPlan
    examples: list[TokenizedExample]
    eval_batches: list[Batch]
    pad_id: int
    total_steps: int
    # Without max_steps the last step may take fewer micro-batches than the others.
    total_micro_batches: int
    state: TrainState = field(default_factory=TrainState)
    # Saved with every checkpoint's adapter; None only for runs built without one (benches).
    tokenizer: PreTrainedTokenizerBase | None = None

    def training_objects(self) -> dict[str, Any]:
        """The objects whose state_dict a checkpoint stores, by file name."""
        objects: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.scaler.is_enabled():
            objects["scaler"] = self.scaler
        return objects


def autocast(config: TrainingConfig) -> AbstractContextManager[Any]:
    """Mixed precision in the compute dtype; plain fp32 needs none."""
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    enabled = config.compute_dtype != "float32"
    return torch.autocast(device_type, dtype=config.torch_dtype, enabled=enabled)


def build_scaler(config: TrainingConfig) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    enabled = config.compute_dtype == "float16" and config.device.startswith("cuda")
    return torch.amp.GradScaler("cuda", enabled=enabled)


def token_losses(model: PeftModel, batch: Batch, run: TrainingRun) -> tuple[torch.Tensor, Any]:
    """Summed cross-entropy over labelled tokens, and the shifted logits/labels for metrics."""
    with autocast(run.config):
        logits = model(**batch.model_inputs(run.config.device), use_cache=False).logits
    shifted_logits = logits[:, :-1].float().flatten(0, 1)
    shifted_labels = batch.labels[:, 1:].to(logits.device).flatten()
    loss = torch.nn.functional.cross_entropy(
        shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, (shifted_logits, shifted_labels)


def step_micro_batches(run: TrainingRun, step: int) -> range:
    """Indices of the micro-batches that step `step` accumulates."""
    accumulation = run.config.training.gradient_accumulation_steps
    end = min((step + 1) * accumulation, run.total_micro_batches)
    return range(step * accumulation, end)


def train_step(run: TrainingRun) -> StepOutput:
    """Forward/backward over the step's micro-batches, clip, optimizer and scheduler step."""
    indices = step_micro_batches(run, run.state.global_step)
    batches = [
        collate(run.examples, rows, run.pad_id, run.config.training.packing)
        for i in indices
        for rows in run.plan.passes(i)
    ]
    # Normalise by the step's trained tokens: every token weighs the same, whatever its batch.
    step_tokens = max(1, sum(batch.trained_tokens for batch in batches))
    total_loss, correct, counted = 0.0, 0, 0
    for batch in batches:
        loss, (logits, labels) = token_losses(run.model, batch, run)
        run.scaler.scale(loss / step_tokens).backward()
        total_loss += loss.item()
        batch_correct, batch_counted = count_correct(logits, labels)
        correct, counted = correct + batch_correct, counted + batch_counted
    run.scaler.unscale_(run.optimizer)
    parameters = [p for p in run.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, run.config.training.max_grad_norm)
    lr = float(run.scheduler.get_last_lr()[0])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return StepOutput(
        loss=total_loss / step_tokens,
        token_accuracy=correct / max(1, counted),
        lr=lr,
        grad_norm=float(grad_norm),
        tokens=sum(batch.tokens for batch in batches),
        trained_tokens=sum(batch.trained_tokens for batch in batches),
    )


@torch.no_grad()
def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(labelled tokens whose next token the logits rank first, labelled tokens)."""
    labelled = labels != IGNORE_INDEX
    correct = int((logits.detach().argmax(-1)[labelled] == labels[labelled]).sum())
    return correct, int(labelled.sum())


@torch.no_grad()
def evaluate(run: TrainingRun) -> tuple[float, float]:
    """Mean loss per labelled token and next-token accuracy on the whole validation set."""
    inference_mode(run.model)
    loss_sum, correct, count = 0.0, 0, 0
    for batch in run.eval_batches:
        loss, (logits, labels) = token_losses(run.model, batch, run)
        loss_sum += loss.item()
        batch_correct, batch_count = count_correct(logits, labels)
        correct, count = correct + batch_correct, count + batch_count
    run.model.train()
    return loss_sum / max(1, count), correct / max(1, count)


def build_eval_batches(
    examples: list[TokenizedExample], batch_size: int, pad_id: int
) -> list[Batch]:
    """Validation batches of similar lengths in a fixed order, each split into passes."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [
        collate(examples, [(batch[at],) for at in group], pad_id, packing=False)
        for batch in batches
        for group in split_passes([len(examples[i].input_ids) for i in batch])
    ]


def count_steps(plan: BatchPlan, config: TrainingConfig) -> tuple[int, int]:
    """(optimizer steps, micro-batches): max_steps when set, else n_epochs over the rows."""
    accumulation = config.training.gradient_accumulation_steps
    if config.training.max_steps is not None:
        steps = config.training.max_steps
        return steps, steps * accumulation
    micro_batches = plan.batches_per_epoch * config.n_epochs
    return math.ceil(micro_batches / accumulation), micro_batches
