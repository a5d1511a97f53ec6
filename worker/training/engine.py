"""run_training: build config -> load model -> load data -> train -> save, read top to bottom."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import set_seed

from worker.training.artifacts import (
    build_provenance,
    discard_adapter_staging,
    file_sha256,
    model_card,
    save_adapter,
)
from worker.training.batching import build_plan
from worker.training.builders import build_optimizer, build_scheduler
from worker.training.checkpoint import (
    discard_partial_checkpoints,
    latest_complete_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from worker.training.config import TrainingConfig, TrainingPaths
from worker.training.data import TokenizedDataset, load_dataset
from worker.training.dpo import (
    build_pair_plan,
    disable_dropout,
    dpo_evaluate,
    dpo_train_step,
    eval_pair_batches,
    load_pairs,
    prepare_references,
    restore_references,
    saved_references,
)
from worker.training.loop import (
    DpoRun,
    TrainingRun,
    TrainState,
    build_eval_batches,
    build_scaler,
    count_steps,
    evaluate,
    train_step,
)
from worker.training.metrics import ResultsWriter, StepMetrics, StopReason, TrainingHooks
from worker.training.models import load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    """How a run ended and what it measured (this session's runtime; cumulative tokens)."""

    status: Literal["completed", "stopped"]
    stop_reason: StopReason | None
    global_step: int
    total_steps: int
    trained_tokens: int  # tokens the loss was taken on, all sessions, padding never counted
    train_runtime: float  # seconds of the training loop in this session
    tokens_per_second: float  # non-pad input tokens per second in this session
    final_loss: float | None
    train_mean_token_accuracy: float | None  # of the last step
    # The whole validation set at the last checkpoint (the last step, when completed).
    full_valid_loss: float | None
    full_valid_mean_token_accuracy: float | None
    peak_memory_bytes: int
    truncated: int
    dropped: int
    resumed_from_step: int | None
    adapter_dir: Path | None  # None when stopped: the checkpoint holds the adapter
    checkpoint_dir: Path | None
    results_csv: Path
    compute_path: dict[str, Any] = field(default_factory=dict)  # attention, loss, kernels

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def run_training(
    config: TrainingConfig,
    paths: TrainingPaths,
    hooks: TrainingHooks | None = None,
    *,
    resume: bool = True,
) -> TrainingResult:
    """Train a LoRA adapter; resume from the newest complete checkpoint unless told not to."""
    hooks = hooks or TrainingHooks()
    discard_interrupted_saves(paths)
    set_seed(config.seed)
    loaded = load_model(config, paths.models_dir, parent_adapter=paths.parent_adapter)
    train_data, eval_data = load_data(config, paths, loaded.tokenizer)
    run = build_run(
        config,
        loaded.model,
        loaded.tokenizer.pad_token_id,
        train_data,
        eval_data,
        tokenizer=loaded.tokenizer,
    )
    run.compute = loaded.compute
    if config.spec.method == "dpo":
        run.dpo = DpoRun(beta=config.beta, parent=paths.parent_adapter is not None)
        disable_dropout(run.model)
    logger.info("%s", run.compute.describe())
    if hooks.on_message:
        hooks.on_message(run.compute.describe())
    resume_from = latest_complete_checkpoint(paths.checkpoints_dir) if resume else None
    if resume_from is not None:
        restore_run(run, resume_from, paths)
    resumed_from_step = run.state.global_step if resume_from is not None else None
    if run.dpo is not None:
        prepare_references(run, eval_data)
    started = time.perf_counter()
    stop_reason, last_checkpoint, tokens = train(run, paths, hooks, resume_from)
    runtime = time.perf_counter() - started
    adapter_dir = None
    if stop_reason is None:
        adapter_dir = save_final_adapter(run, loaded.tokenizer, paths)
    return TrainingResult(
        status="completed" if stop_reason is None else "stopped",
        stop_reason=stop_reason,
        global_step=run.state.global_step,
        total_steps=run.total_steps,
        trained_tokens=run.state.trained_tokens,
        train_runtime=runtime,
        tokens_per_second=tokens / runtime if runtime > 0 else 0.0,
        final_loss=run.state.train_loss,
        train_mean_token_accuracy=run.state.train_mean_token_accuracy,
        full_valid_loss=run.state.full_valid_loss,
        full_valid_mean_token_accuracy=run.state.full_valid_mean_token_accuracy,
        peak_memory_bytes=peak_memory_bytes(config.device),
        truncated=train_data.truncated,
        dropped=train_data.dropped,
        resumed_from_step=resumed_from_step,
        adapter_dir=adapter_dir,
        checkpoint_dir=last_checkpoint,
        results_csv=paths.results_csv,
        compute_path=run.compute.as_dict(),
    )


def discard_interrupted_saves(paths: TrainingPaths) -> None:
    """Remove what a run killed mid-save left in the output directory (staging directories,
    half-written checkpoints): nothing reads them, and they would stay for good."""
    for path in [
        *discard_partial_checkpoints(paths.checkpoints_dir),
        *discard_adapter_staging(paths.output_dir),
    ]:
        logger.info("removed %s, left by an interrupted save", path)


def load_data(
    config: TrainingConfig, paths: TrainingPaths, tokenizer: Any
) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    """The tokenized training set and, when given, the validation set."""
    training = config.training

    def load(path: Path, param: str) -> TokenizedDataset:
        if config.spec.method == "dpo":
            return load_pairs(path, tokenizer, max_seq_length=training.max_seq_length, param=param)
        return load_dataset(
            path,
            tokenizer,
            max_seq_length=training.max_seq_length,
            train_on=training.train_on,
            param=param,
        )

    train_data = load(paths.train_file, "training_file")
    eval_data = load(paths.validation_file, "validation_file") if paths.validation_file else None
    logger.info(
        "training examples: %d (truncated %d, dropped %d)",
        len(train_data.examples),
        train_data.truncated,
        train_data.dropped,
    )
    return train_data, eval_data


def build_run(
    config: TrainingConfig,
    model: Any,
    pad_id: int,
    train_data: TokenizedDataset,
    eval_data: TokenizedDataset | None,
    tokenizer: Any = None,
) -> TrainingRun:
    """Batch plan, optimizer, scheduler and scaler around the model."""
    training = config.training
    if config.spec.method == "dpo":  # a row is a pair; pairs are never packed together
        plan = build_pair_plan(train_data.examples, batch_size=config.batch_size, seed=config.seed)
        eval_batches = eval_pair_batches(eval_data.examples, config.batch_size) if eval_data else []
    else:
        plan = build_plan(
            train_data.examples,
            batch_size=config.batch_size,
            seed=config.seed,
            packing=training.packing,
            max_seq_length=training.max_seq_length,
        )
        eval_batches = (
            build_eval_batches(eval_data.examples, config.batch_size, pad_id) if eval_data else []
        )
    total_steps, total_micro_batches = count_steps(plan, config)
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), config)
    model.train()
    return TrainingRun(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, total_steps),
        scaler=build_scaler(config),
        plan=plan,
        examples=train_data.examples,
        eval_batches=eval_batches,
        pad_id=pad_id,
        total_steps=total_steps,
        total_micro_batches=total_micro_batches,
        tokenizer=tokenizer,
    )


def restore_run(run: TrainingRun, checkpoint: Path, paths: TrainingPaths) -> None:
    """Load a checkpoint into the run; the data must be the one it was trained on."""
    saved = load_checkpoint(checkpoint, run.model, run.training_objects(), run.config.device)
    if saved["training_file_sha256"] != file_sha256(paths.train_file):
        raise RuntimeError(f"checkpoint {checkpoint} was trained on a different training file")
    run.state = TrainState.from_saved(saved["state"])
    if run.dpo is not None and "reference" in saved:
        restore_references(run, saved["reference"])
    logger.info("resumed from %s at step %d", checkpoint, run.state.global_step)


def save_final_adapter(run: TrainingRun, tokenizer: Any, paths: TrainingPaths) -> Path:
    """The adapter directory with tokenizer, model card and provenance.json."""
    state = run.state
    summary = {
        "global_step": state.global_step,
        "trained_tokens": state.trained_tokens,
        "final_loss": state.train_loss,
        "train_mean_token_accuracy": state.train_mean_token_accuracy,
        "full_valid_loss": state.full_valid_loss,
        "full_valid_mean_token_accuracy": state.full_valid_mean_token_accuracy,
    }
    return save_adapter(
        run.model,
        tokenizer,
        paths.adapter_dir,
        build_provenance(run.config, paths, summary, compute=run.compute.as_dict()),
        model_card(run.config, summary),
    )


def train(
    run: TrainingRun, paths: TrainingPaths, hooks: TrainingHooks, last_checkpoint: Path | None
) -> tuple[StopReason | None, Path | None, int]:
    """Step until done or told to stop; returns (stop reason, last checkpoint, tokens seen)."""
    training = run.config.training
    results = ResultsWriter(paths.results_csv, run.state.global_step)
    first_step, started, tokens = run.state.global_step, time.perf_counter(), 0
    metrics: StepMetrics | None = None  # set once a step ran in this session
    while run.state.global_step < run.total_steps:
        stop_reason = hooks.should_stop() if hooks.should_stop else None
        if stop_reason is not None:
            if metrics is not None:  # else nothing new since the resumed checkpoint
                metrics = with_validation(run, metrics, valid=False, full=True)
                last_checkpoint = save_step_checkpoint(run, paths, hooks, metrics)
            return stop_reason, last_checkpoint, tokens
        output = dpo_train_step(run) if run.dpo is not None else train_step(run)
        tokens += output.tokens
        update_state(run.state, output)
        elapsed = time.perf_counter() - started
        metrics = step_metrics(run, output, tokens, elapsed, run.state.global_step - first_step)
        checkpoint_due = is_due(training.checkpoint_every_steps, run)
        metrics = with_validation(
            run, metrics, valid=is_due(training.eval_every_steps, run), full=checkpoint_due
        )
        results.write(metrics)
        if hooks.on_metrics:
            hooks.on_metrics(metrics)
        if checkpoint_due:
            last_checkpoint = save_step_checkpoint(run, paths, hooks, metrics)
    return None, last_checkpoint, tokens


def is_due(every: int | None, run: TrainingRun) -> bool:
    """Every N steps, and always at the last step."""
    step = run.state.global_step
    return step == run.total_steps or (every is not None and step % every == 0)


def update_state(state: TrainState, output: Any) -> None:
    """Advance the step counter and the running totals."""
    state.global_step += 1
    state.trained_tokens += output.trained_tokens
    state.train_loss = output.loss
    state.train_mean_token_accuracy = output.token_accuracy
    state.lr = output.lr


def step_metrics(
    run: TrainingRun, output: Any, tokens: int, elapsed: float, session_steps: int
) -> StepMetrics:
    """The step's metrics, with throughput and ETA from this session's pace."""
    state = run.state
    seconds_per_step = elapsed / max(1, session_steps)
    micro_batches_done = min(
        state.global_step * run.config.training.gradient_accumulation_steps,
        run.total_micro_batches,
    )
    return StepMetrics(
        step=state.global_step,
        total_steps=run.total_steps,
        epoch=micro_batches_done / run.plan.batches_per_epoch,
        train_loss=output.loss,
        train_mean_token_accuracy=output.token_accuracy,
        lr=output.lr,
        grad_norm=output.grad_norm,
        tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
        trained_tokens=state.trained_tokens,
        eta_seconds=(run.total_steps - state.global_step) * seconds_per_step,
        **output.extra,
    )


def with_validation(
    run: TrainingRun, metrics: StepMetrics, *, valid: bool, full: bool
) -> StepMetrics:
    """One pass over the validation set, when there is one and the step needs it: on
    evaluation steps its loss and token accuracy are valid_*, on checkpoint steps both
    valid_* and full_valid_* (a checkpoint's metrics, as OpenAI reports them)."""
    if not run.eval_batches or not (valid or full) or metrics.full_valid_loss is not None:
        return metrics
    if run.dpo is not None:
        loss, accuracy, preference = dpo_evaluate(run)
    else:
        (loss, accuracy), preference = evaluate(run), {}
    state = run.state
    state.valid_loss, state.valid_mean_token_accuracy = loss, accuracy
    metrics = replace(metrics, valid_loss=loss, valid_mean_token_accuracy=accuracy)
    metrics = replace(metrics, **cast(dict[str, Any], preference))
    if full:
        state.full_valid_loss, state.full_valid_mean_token_accuracy = loss, accuracy
        metrics = replace(metrics, full_valid_loss=loss, full_valid_mean_token_accuracy=accuracy)
        if preference:
            metrics = replace(
                metrics,
                full_valid_reward_margin=preference["valid_reward_margin"],
                full_valid_preference_accuracy=preference["valid_preference_accuracy"],
            )
    return metrics


def save_step_checkpoint(
    run: TrainingRun, paths: TrainingPaths, hooks: TrainingHooks, metrics: StepMetrics
) -> Path:
    """Save a complete checkpoint at the current step and tell the caller."""
    state = {
        "state": asdict(run.state),
        "training_file_sha256": file_sha256(paths.train_file),
        "total_steps": run.total_steps,
    }
    if run.dpo is not None:
        state["reference"] = saved_references(run)
    path = save_checkpoint(
        paths.checkpoints_dir,
        run.state.global_step,
        run.model,
        run.training_objects(),
        state,
        tokenizer=run.tokenizer,
    )
    if hooks.on_checkpoint:
        hooks.on_checkpoint(run.state.global_step, path, metrics)
    return path


def peak_memory_bytes(device: str) -> int:
    """Peak CUDA allocation on a GPU; the process's peak RSS on the CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
