"""DPO (Rafailov et al. 2023): preference pairs, the sigmoid loss, and its metrics.

A pair is two tokenized examples, its input followed by the preferred answer and by the
non-preferred one; labels cover the answer only. Pair p is examples 2p (chosen) and 2p + 1
(rejected), one row of the batch plan, so a micro-batch computes both answers of its pairs in
one padding-free pass.

The reference is the model as training starts, with no second copy of it in memory: the same
weights with the adapter disabled (a fresh adapter adds nothing) or, when the job continues a
fine-tuned parent, with the parent's adapter as loaded. Its log-probabilities are computed
once per pair before the first step and kept in the checkpoints' trainer state: every epoch,
and a resumed run, reuse the same numbers, which is exact because the reference never changes.

With beta and the sums of log-probabilities of each answer under the policy (pc, pr) and the
reference (rc, rr), as TRL's DPOTrainer computes them (loss_type "sigmoid"):

    rewards_chosen = beta (pc - rc), rewards_rejected = beta (pr - rr)
    loss = -log sigmoid(rewards_chosen - rewards_rejected), averaged over pairs
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedTokenizerBase

from app.datasets import Example
from worker.training.batching import Batch, BatchPlan, Row, collate_padding_free, group_by_length
from worker.training.data import (
    IGNORE_INDEX,
    TokenizedDataset,
    TokenizedExample,
    check_tools_rendered,
    empty_after_truncation,
    read_dataset,
    render_chat,
    tokenize_chat,
)
from worker.training.errors import TrainingInputError
from worker.training.loop import (
    StepOutput,
    TrainingRun,
    autocast,
    optimizer_step,
    step_micro_batches,
)
from worker.training.loss import CHUNK_TOKENS
from worker.training.models import inference_mode

# Examples per pair: the preferred answer, then the other.
PAIR = 2


@dataclass(frozen=True)
class PairLogps:
    """Summed log-probabilities of each sequence of a batch (chosen, rejected, chosen...),
    and the chosen answers' next-token accuracy counts."""

    logps: torch.Tensor  # (sequences,), a graph when training
    correct: int
    counted: int


@dataclass(frozen=True)
class DpoOutput:
    """A batch's DPO loss (summed over its pairs) and what the metrics need."""

    loss: torch.Tensor
    rewards_chosen: torch.Tensor  # (pairs,), detached
    rewards_rejected: torch.Tensor
    correct: int
    counted: int


@dataclass
class DpoTotals:
    """Running sums over the pairs of a step or of an evaluation pass."""

    loss: float = 0.0
    chosen: float = 0.0
    rejected: float = 0.0
    won: int = 0
    pairs: int = 0
    correct: int = 0
    counted: int = 0

    def add(self, output: DpoOutput) -> None:
        self.loss += float(output.loss.detach())
        self.chosen += float(output.rewards_chosen.sum())
        self.rejected += float(output.rewards_rejected.sum())
        self.won += int((output.rewards_chosen > output.rewards_rejected).sum())
        self.pairs += len(output.rewards_chosen)
        self.correct += output.correct
        self.counted += output.counted

    def metrics(self, prefix: str) -> dict[str, float]:
        """Means per pair, named as the step metrics name them (`train_`, `valid_`)."""
        pairs = max(1, self.pairs)
        return {
            f"{prefix}loss": self.loss / pairs,
            f"{prefix}rewards_chosen": self.chosen / pairs,
            f"{prefix}rewards_rejected": self.rejected / pairs,
            f"{prefix}reward_margin": (self.chosen - self.rejected) / pairs,
            f"{prefix}preference_accuracy": self.won / pairs,
        }

    @property
    def token_accuracy(self) -> float:
        return self.correct / max(1, self.counted)


# --- data -------------------------------------------------------------------------------


def answer_conversation(example: Example, answer: Any) -> list[Any]:
    """The pair's input then one answer, only the answer trained: earlier assistant turns of
    the input are context."""
    context = [replace(m, weight=0) if m.role == "assistant" else m for m in example.messages]
    return [*context, replace(answer, weight=None)]


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, example: Example
) -> tuple[TokenizedExample, TokenizedExample]:
    """(chosen, rejected): the input and each answer through the chat template."""
    if example.format != "preference" or example.preferred is None or example.non_preferred is None:
        raise TrainingInputError(
            "invalid_file_format",
            "a DPO job trains on preference pairs (input, preferred_output, "
            "non_preferred_output); this file is in another format",
            "training_file",
        )
    tokenized = []
    for answer in (example.preferred, example.non_preferred):
        messages = answer_conversation(example, answer)
        if example.uses_tools:
            probe = replace(example, messages=tuple(messages))
            check_tools_rendered(probe, render_chat(tokenizer, messages, example.tools))
        tokenized.append(tokenize_chat(tokenizer, messages, "assistant", example.tools))
    return tokenized[0], tokenized[1]


def truncate(example: TokenizedExample, max_seq_length: int) -> TokenizedExample:
    return TokenizedExample(example.input_ids[:max_seq_length], example.labels[:max_seq_length])


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_seq_length: int,
    param: str = "training_file",
) -> TokenizedDataset:
    """Every pair as (chosen, rejected), each cut to max_seq_length; a pair one of whose
    answers has no token left within the limit is dropped."""
    kept: list[TokenizedExample] = []
    truncated = 0
    shortest_prompt: int | None = None
    for example in examples:
        chosen, rejected = tokenize_pair(tokenizer, example)
        if max(len(chosen.input_ids), len(rejected.input_ids)) > max_seq_length:
            truncated += 1
            prompt = min(chosen.prompt_length, rejected.prompt_length)
            chosen, rejected = truncate(chosen, max_seq_length), truncate(rejected, max_seq_length)
            if chosen.trained_tokens == 0 or rejected.trained_tokens == 0:
                shortest_prompt = min(prompt, shortest_prompt or prompt)
                continue
        kept += [chosen, rejected]
    if not kept:
        raise empty_after_truncation(len(examples), max_seq_length, shortest_prompt or 0, param)
    pairs = len(kept) // PAIR
    return TokenizedDataset(examples=kept, truncated=truncated, dropped=len(examples) - pairs)


def load_pairs(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_length: int,
    param: str = "training_file",
) -> TokenizedDataset:
    """Read a preference file with the API's own parser and tokenize its pairs."""
    examples = read_dataset(path, param)
    return tokenize_pairs(tokenizer, examples, max_seq_length=max_seq_length, param=param)


def pair_rows(examples: Sequence[TokenizedExample]) -> list[Row]:
    """One row per pair: its chosen and rejected examples."""
    return [(index, index + 1) for index in range(0, len(examples), PAIR)]


def build_pair_plan(
    examples: Sequence[TokenizedExample], *, batch_size: int, seed: int
) -> BatchPlan:
    """batch_size pairs per micro-batch, in the same per-epoch order as supervised rows."""
    rows = pair_rows(examples)
    lengths = [sum(len(examples[i].input_ids) for i in row) for row in rows]
    return BatchPlan(rows, lengths, batch_size, seed, group_by_length=True)


def eval_pair_rows(examples: Sequence[TokenizedExample], batch_size: int) -> list[list[Row]]:
    """The rows of each validation batch: batch_size pairs, longest first, a fixed order."""
    rows = pair_rows(examples)
    lengths = [sum(len(examples[i].input_ids) for i in row) for row in rows]
    order = group_by_length(list(range(len(rows))), lengths, batch_size)
    return [
        [rows[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def eval_pair_batches(examples: Sequence[TokenizedExample], batch_size: int) -> list[Batch]:
    """Validation batches of batch_size pairs, each padding-free (eval_pair_rows' order)."""
    return [collate_padding_free(examples, rows) for rows in eval_pair_rows(examples, batch_size)]


def batch_pairs(rows: Sequence[Row]) -> list[int]:
    """The pair index of each row of a batch."""
    return [row[0] // PAIR for row in rows]


# --- log-probabilities and the loss -----------------------------------------------------


def chunk_logps(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's log-probability of its label (0 where unlabelled), and whether the
    label ranked first; logits in fp32, one chunk at a time."""
    logits = head(hidden).float()
    labelled = labels != IGNORE_INDEX
    safe = torch.where(labelled, labels, torch.zeros_like(labels))
    picked = torch.gather(logits.log_softmax(-1), 1, safe.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        right = (logits.argmax(-1) == labels) & labelled
    return picked * labelled, right


def token_logps(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """chunk_logps over (N, hidden) states, CHUNK_TOKENS at a time; when training, each chunk
    is checkpointed (its logits recomputed in backward), so no chunk's logits outlive it."""
    picked, right = [], []
    for start in range(0, hidden.shape[0], chunk):
        part, part_labels = hidden[start : start + chunk], labels[start : start + chunk]
        if torch.is_grad_enabled():
            values, hits = checkpoint(chunk_logps, head, part, part_labels, use_reentrant=False)
        else:
            values, hits = chunk_logps(head, part, part_labels)
        picked.append(values)
        right.append(hits)
    return torch.cat(picked), torch.cat(right)


def sequence_logps(model: Any, batch: Batch, device: str) -> PairLogps:
    """Summed log-probabilities of the labelled tokens of each sequence of a padding-free
    batch, computed in one pass; token accuracy counted on the chosen sequences."""
    assert batch.sequence_starts is not None, "DPO batches are padding-free"
    inputs = batch.model_inputs(device)
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state[0, :-1]
    labels = batch.labels[0, 1:].to(hidden.device)
    logps, right = token_logps(model.get_output_embeddings(), hidden, labels)
    # Position j predicts token j + 1, which belongs to the sequence whose start precedes it.
    starts = batch.sequence_starts.to(hidden.device).long()
    owner = (
        torch.bucketize(
            torch.arange(1, labels.shape[0] + 1, device=hidden.device), starts, right=True
        )
        - 1
    )
    sequences = starts.shape[0] - 1
    sums = torch.zeros(sequences, dtype=logps.dtype, device=hidden.device).index_add(
        0, owner, logps
    )
    chosen = (owner % PAIR == 0) & (labels != IGNORE_INDEX)
    return PairLogps(sums, int(right[chosen].sum()), int(chosen.sum()))


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed sigmoid loss, rewards of chosen, rewards of rejected) of pairs whose log-probs
    come interleaved: chosen, rejected, chosen..."""
    chosen_rewards = beta * (policy[0::PAIR] - reference[0::PAIR])
    rejected_rewards = beta * (policy[1::PAIR] - reference[1::PAIR])
    losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.sum(), chosen_rewards.detach(), rejected_rewards.detach()


def batch_dpo(
    model: Any, batch: Batch, reference: torch.Tensor, beta: float, device: str
) -> DpoOutput:
    """The DPO loss of one padding-free batch, `reference` its sequences' reference log-probs."""
    policy = sequence_logps(model, batch, device)
    loss, chosen, rejected = dpo_loss(policy.logps, reference.to(policy.logps.device), beta)
    return DpoOutput(loss, chosen, rejected, policy.correct, policy.counted)


def batch_reference(references: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """The reference log-probs of a batch's sequences, in the batch's order."""
    return references[[index for row in rows for index in row]]


@torch.no_grad()
def reference_logps(
    model: Any, examples: Sequence[TokenizedExample], batch_size: int, device: str, *, parent: bool
) -> torch.Tensor:
    """Every example's summed log-probability under the model as training starts: with the
    adapter disabled, or as loaded from a parent adapter. (examples,) fp32."""
    rows = pair_rows(examples)
    values = torch.zeros(len(examples), dtype=torch.float32)
    base = model.get_base_model()
    for start in range(0, len(rows), batch_size):
        group = rows[start : start + batch_size]
        batch = collate_padding_free(examples, group)
        if parent:
            logps = sequence_logps(base, batch, device).logps
        else:
            with model.disable_adapter():
                logps = sequence_logps(base, batch, device).logps
        values[[index for row in group for index in row]] = logps.float().cpu()
    return values


def disable_dropout(model: torch.nn.Module) -> None:
    """No dropout in a DPO run (TRL's default): the policy's log-probs at step 0 equal the
    reference's, and the reward margins measure the training, not the noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# --- the run ----------------------------------------------------------------------------


def prepare_references(run: TrainingRun, eval_data: TokenizedDataset | None) -> None:
    """Compute the reference log-probs of every training and validation sequence, unless a
    resumed checkpoint restored them."""
    dpo = run.dpo
    assert dpo is not None
    device, size = run.config.device, run.config.batch_size
    if dpo.references is None:
        with autocast(run.config):
            dpo.references = reference_logps(
                run.model, run.examples, size, device, parent=dpo.parent
            )
            if eval_data is not None:
                valid = reference_logps(
                    run.model, eval_data.examples, size, device, parent=dpo.parent
                )
                dpo.eval_references = split_eval_references(valid, eval_data.examples, size)
    run.model.train()


def split_eval_references(
    references: torch.Tensor, examples: Sequence[TokenizedExample], batch_size: int
) -> list[torch.Tensor]:
    """The validation references, one tensor per evaluation batch in its sequence order."""
    return [batch_reference(references, rows) for rows in eval_pair_rows(examples, batch_size)]


def saved_references(run: TrainingRun) -> dict[str, list[float]]:
    """The references as a checkpoint's trainer state stores them (exact: fp32 in JSON)."""
    dpo = run.dpo
    assert dpo is not None and dpo.references is not None
    return {
        "train": dpo.references.tolist(),
        "valid": [value for part in dpo.eval_references for value in part.tolist()],
        "valid_batches": [len(part) for part in dpo.eval_references],
    }


def restore_references(run: TrainingRun, saved: dict[str, list[float]]) -> None:
    dpo = run.dpo
    assert dpo is not None
    dpo.references = torch.tensor(saved["train"], dtype=torch.float32)
    valid = torch.tensor(saved["valid"], dtype=torch.float32)
    sizes = [int(size) for size in saved["valid_batches"]]
    dpo.eval_references = list(valid.split(sizes)) if sizes else []


def dpo_train_step(run: TrainingRun) -> StepOutput:
    """One optimizer step over the step's micro-batches of pairs: the loss averaged over the
    step's pairs, whatever their micro-batch."""
    dpo = run.dpo
    assert dpo is not None and dpo.references is not None
    indices = step_micro_batches(run, run.state.global_step)
    micro_batches = [run.plan.micro_batch(i) for i in indices]
    step_pairs = sum(len(rows) for rows in micro_batches)
    totals = DpoTotals()
    tokens = trained = 0
    for rows in micro_batches:
        batch = collate_padding_free(run.examples, rows)
        with autocast(run.config):
            output = batch_dpo(
                run.model.get_base_model(),
                batch,
                batch_reference(dpo.references, rows),
                dpo.beta,
                run.config.device,
            )
        run.scaler.scale(output.loss / step_pairs).backward()
        totals.add(output)
        tokens, trained = tokens + batch.tokens, trained + batch.trained_tokens
    grad_norm, lr = optimizer_step(run)
    metrics = totals.metrics("train_")
    return StepOutput(
        loss=metrics.pop("train_loss"),
        token_accuracy=totals.token_accuracy,
        lr=lr,
        grad_norm=grad_norm,
        tokens=tokens,
        trained_tokens=trained,
        extra=metrics,
    )


@torch.no_grad()
def dpo_evaluate(run: TrainingRun) -> tuple[float, float, dict[str, float]]:
    """(mean loss per pair, chosen token accuracy, valid_* rewards, margin and preference
    accuracy) on the whole validation set."""
    dpo = run.dpo
    assert dpo is not None
    inference_mode(run.model)
    totals = DpoTotals()
    for batch, reference in zip(run.eval_batches, dpo.eval_references, strict=True):
        with autocast(run.config):
            output = batch_dpo(
                run.model.get_base_model(), batch, reference, dpo.beta, run.config.device
            )
        totals.add(output)
    run.model.train()
    metrics = totals.metrics("valid_")
    return metrics.pop("valid_loss"), totals.token_accuracy, metrics
