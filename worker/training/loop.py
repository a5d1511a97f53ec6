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

from worker.training.batching import Batch, BatchPlan, collate_padding_free
from worker.training.config import TrainingConfig
from worker.training.data import TokenizedExample
from worker.training.kernels import ComputePath
from worker.training.loss import LossOutput, causal_lm_loss
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
    # A DPO step's rewards, margin and preference accuracy (train_*); none for supervised.
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class DpoRun:
    """What a DPO run adds: beta and the reference log-probs of every training and
    validation sequence (dpo.py), computed before the first step."""

    beta: float
    parent: bool  # the reference is the parent's adapter, not the bare base
    references: torch.Tensor | None = None  # (training examples,)
    eval_references: list[torch.Tensor] = field(default_factory=list)  # one per eval batch


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
    # The attention, loss and kernels the model was set up with (models.configure_compute).
    compute: ComputePath = field(default_factory=lambda: ComputePath(attention="sdpa"))
    dpo: DpoRun | None = None  # set for DPO jobs

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


def token_losses(batch: Batch, run: TrainingRun) -> LossOutput:
    """Summed cross-entropy over the batch's labelled tokens, and its token accuracy counts."""
    inputs = batch.model_inputs(run.config.device)
    with autocast(run.config):
        return causal_lm_loss(run.model.get_base_model(), inputs, batch.labels, run.compute.loss)


def step_micro_batches(run: TrainingRun, step: int) -> range:
    """Indices of the micro-batches that step `step` accumulates."""
    accumulation = run.config.training.gradient_accumulation_steps
    end = min((step + 1) * accumulation, run.total_micro_batches)
    return range(step * accumulation, end)


def train_step(run: TrainingRun) -> StepOutput:
    """Forward/backward over the step's micro-batches, clip, optimizer and scheduler step."""
    indices = step_micro_batches(run, run.state.global_step)
    # One padding-free pass per micro-batch: its rows back to back, no padding.
    batches = [collate_padding_free(run.examples, run.plan.micro_batch(i)) for i in indices]
    # Normalise by the step's trained tokens: every token weighs the same, whatever its batch.
    step_tokens = max(1, sum(batch.trained_tokens for batch in batches))
    total_loss, correct, counted = 0.0, 0, 0
    for batch in batches:
        output = token_losses(batch, run)
        run.scaler.scale(output.loss / step_tokens).backward()
        total_loss += output.loss.item()
        correct, counted = correct + output.correct, counted + output.counted
    grad_norm, lr = optimizer_step(run)
    return StepOutput(
        loss=total_loss / step_tokens,
        token_accuracy=correct / max(1, counted),
        lr=lr,
        grad_norm=grad_norm,
        tokens=sum(batch.tokens for batch in batches),
        trained_tokens=sum(batch.trained_tokens for batch in batches),
    )


def optimizer_step(run: TrainingRun) -> tuple[float, float]:
    """Clip, step the optimizer, scaler and scheduler; (grad norm before clipping, lr used)."""
    run.scaler.unscale_(run.optimizer)
    parameters = [p for p in run.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, run.config.training.max_grad_norm)
    lr = float(run.scheduler.get_last_lr()[0])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


@torch.no_grad()
def evaluate(run: TrainingRun) -> tuple[float, float]:
    """Mean loss per labelled token and next-token accuracy on the whole validation set."""
    inference_mode(run.model)
    loss_sum, correct, count = 0.0, 0, 0
    for batch in run.eval_batches:
        output = token_losses(batch, run)
        loss_sum += output.loss.item()
        correct, count = correct + output.correct, count + output.counted
    run.model.train()
    return loss_sum / max(1, count), correct / max(1, count)


def build_eval_batches(
    examples: list[TokenizedExample], batch_size: int, pad_id: int
) -> list[Batch]:
    """Validation batches of batch_size examples in a fixed order, each padding-free.

    pad_id is unused (nothing is padded); kept so callers need not know.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [collate_padding_free(examples, [(i,) for i in batch]) for batch in batches]


def count_steps(plan: BatchPlan, config: TrainingConfig) -> tuple[int, int]:
    """(optimizer steps, micro-batches): max_steps when set, else n_epochs over the rows."""
    accumulation = config.training.gradient_accumulation_steps
    if config.training.max_steps is not None:
        steps = config.training.max_steps
        return steps, steps * accumulation
    micro_batches = plan.batches_per_epoch * config.n_epochs
    return math.ceil(micro_batches / accumulation), micro_batches
