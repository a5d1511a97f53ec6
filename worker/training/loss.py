"""The LM head and the summed cross-entropy, without full-vocabulary fp32 logits for the row.

A row of T tokens with a vocabulary V would need T x V fp32 logits plus as much again for
their gradient (2048 x 128256 x 4 bytes = 1 GiB each at an 8B model's vocabulary). The head
and the loss are instead computed CHUNK_TOKENS tokens at a time:

- frozen head (the LoRA default): `ChunkedLinearCrossEntropy` computes each chunk's logits,
  loss and the gradient of the loss with respect to the chunk's hidden states in forward,
  keeps only that gradient (T x hidden) and scales it in backward: the head's matmuls are
  done once forward and once backward, as unchunked, and no chunk's logits outlive it;
- trainable head (lm_head among target_modules): each chunk is checkpointed, its logits
  recomputed in backward (one more head forward), so the head's weights get their gradient
  through autograd;
- on CUDA with liger-kernel installed and a plain frozen head: Liger's fused linear
  cross-entropy (kernels.py decides).

Every path returns the summed loss over labelled tokens (the engine normalises by the step's
trained tokens) and the count of labelled tokens whose next token ranked first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from worker.training.data import IGNORE_INDEX

# 1024 tokens x 128256 vocab x 4 bytes = 0.5 GiB of fp32 logits at most per chunk.
CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # summed cross-entropy over labelled tokens (a graph when training)
    correct: int  # labelled tokens whose next token the logits rank first
    counted: int  # labelled tokens


def chunk_loss(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, correct predictions) of one chunk, logits in fp32."""
    logits = head(hidden).float()
    loss = torch.nn.functional.cross_entropy(
        logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    with torch.no_grad():
        labelled = labels != IGNORE_INDEX
        correct = (logits.argmax(-1)[labelled] == labels[labelled]).sum()
    return loss, correct


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed CE of a frozen head over (N, hidden) states; the gradient computed in forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            part_labels = labels[start : start + chunk]
            if not bool((part_labels != IGNORE_INDEX).any()):
                continue  # no loss, no gradient: skip the head's matmul
            part = hidden[start : start + chunk].detach()
            with torch.enable_grad():
                part.requires_grad_(grad is not None)
                loss, right = chunk_loss(head, part, part_labels)
                if grad is not None:
                    (grad[start : start + chunk],) = torch.autograd.grad(loss, part)
            total += loss.detach()
            correct += right
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss: torch.Tensor, grad_correct: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        return grad * grad_loss.to(grad.dtype), None, None, None


def checkpointed_chunks_loss(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE with each chunk checkpointed: for a head that has trainable weights."""
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        part_labels = labels[start : start + chunk]
        if not bool((part_labels != IGNORE_INDEX).any()):
            continue
        part = hidden[start : start + chunk]
        if torch.is_grad_enabled():
            loss, right = checkpoint(chunk_loss, head, part, part_labels, use_reentrant=False)
        else:
            loss, right = chunk_loss(head, part, part_labels)
        total = total + loss
        correct += right
    return total, correct


def head_is_frozen(head: torch.nn.Module) -> bool:
    """Whether no parameter of the head trains (LoRA's default: lm_head is not targeted)."""
    return not any(parameter.requires_grad for parameter in head.parameters())


def chunked_cross_entropy(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk: int = CHUNK_TOKENS,
) -> LossOutput:
    """Summed next-token CE of hidden (N, hidden) states against labels (N,), chunk by chunk.

    `hidden` and `labels` are already shifted (hidden[i] predicts labels[i]).
    """
    labels = labels.to(hidden.device)
    if head_is_frozen(head):
        loss, correct = ChunkedLinearCrossEntropy.apply(hidden, labels, head, chunk)
    else:
        loss, correct = checkpointed_chunks_loss(head, hidden, labels, chunk)
    return LossOutput(loss, int(correct), int((labels != IGNORE_INDEX).sum()))


def full_logits_cross_entropy(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> LossOutput:
    """The plain computation (all logits at once): the reference the tests compare with."""
    labels = labels.to(hidden.device)
    loss, correct = chunk_loss(head, hidden, labels)
    return LossOutput(loss, int(correct), int((labels != IGNORE_INDEX).sum()))


def liger_cross_entropy(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
) -> LossOutput:
    """Liger's fused linear CE (CUDA, Triton): logits never leave the kernel's chunks."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    function = LigerFusedLinearCrossEntropyLoss(
        ignore_index=IGNORE_INDEX, reduction="sum", return_token_accuracy=True
    )
    labels = labels.to(hidden.device)
    output = function(head.weight, hidden, labels, getattr(head, "bias", None))
    counted = int((labels != IGNORE_INDEX).sum())
    # token_accuracy is the mean over labelled tokens.
    correct = round(float(output.token_accuracy) * counted) if counted else 0
    return LossOutput(output.loss, correct, counted)


def causal_lm_loss(
    model: Any, inputs: dict[str, Any], labels: torch.Tensor, loss_path: str
) -> LossOutput:
    """Summed next-token CE of a causal LM (transformers' *ForCausalLM, LoRA layers in it)
    over `labels`, by the path kernels.choose_loss picked."""
    if loss_path == "full_logits":
        logits = model(**inputs, use_cache=False).logits
        hidden = logits[:, :-1].flatten(0, 1)
        return full_logits_cross_entropy(torch.nn.Identity(), hidden, labels[:, 1:].flatten())
    decoder = model.get_decoder()
    hidden = decoder(**inputs, use_cache=False).last_hidden_state[:, :-1].flatten(0, 1)
    shifted = labels[:, 1:].flatten()
    head = model.get_output_embeddings()
    if loss_path == "liger_fused_linear_cross_entropy":
        return liger_cross_entropy(head, hidden, shifted)
    return chunked_cross_entropy(head, hidden, shifted)
