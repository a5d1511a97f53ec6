"""Which compute path a run takes (attention, loss, fused kernels), chosen once and recorded.

Liger's kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) are Triton kernels for
CUDA: they are used only on a CUDA device with `liger-kernel` importable (the `gpu` extra),
and only for architectures Liger knows. Anything missing or refused falls back to plain
PyTorch (chunked cross-entropy, transformers' modules), and `ComputePath` says what ran: it
goes into provenance.json and the job's events.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LIGER_KERNELS = ("rms_norm", "swiglu", "rope")


@dataclass
class ComputePath:
    """What a run computes with: recorded, so a result can be traced to its kernels."""

    attention: str  # transformers' attn_implementation, e.g. loraforge_varlen_sdpa
    loss: str = "chunked_cross_entropy"  # or liger_fused_linear_cross_entropy, full_logits
    kernels: list[str] = field(default_factory=list)  # Liger kernels patched in, e.g. rms_norm
    fallbacks: list[str] = field(default_factory=list)  # why an optional kernel was not used

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the job's events."""
        kernels = ", ".join(self.kernels) if self.kernels else "none"
        line = (
            f"Compute path: padding-free batches, attention {self.attention}, loss {self.loss}, "
            f"Liger kernels {kernels}"
        )
        if self.fallbacks:
            line += f" ({'; '.join(self.fallbacks)})"
        return line


def liger_unavailable_reason(device: str) -> str | None:
    """None when Liger's kernels can run here, else why not."""
    if not device.startswith("cuda"):
        return "Liger kernels are CUDA-only"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'loraforge[gpu]')"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def liger_supports(model: Any) -> bool:
    """Whether Liger has kernels for this architecture (its model_type)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return getattr(model.config, "model_type", None) in MODEL_TYPE_TO_APPLY_LIGER_FN


def apply_liger_kernels(model: Any, path: ComputePath, device: str) -> None:
    """Patch Liger's RMSNorm, SwiGLU and RoPE into the base model where they can run.

    The loss is not patched in: the engine computes it itself (loss.py), with Liger's fused
    linear cross-entropy when `path.loss` says so.
    """
    reason = liger_unavailable_reason(device)
    if reason is None and not liger_supports(model):
        reason = f"Liger has no kernels for model_type {model.config.model_type!r}"
    if reason is None:
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(
                model=model,
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
            path.kernels = list(LIGER_KERNELS)
        except Exception as exc:  # a Liger/transformers mismatch: plain modules still work
            logger.warning("Liger kernels not applied: %s", exc)
            reason = f"Liger kernels failed to apply: {type(exc).__name__}"
    if reason is not None:
        path.fallbacks.append(reason)


def choose_loss(model: Any, path: ComputePath, device: str) -> None:
    """Liger's fused linear CE on CUDA when it can run; chunked CE otherwise."""
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        # The head's output is transformed before the loss: only the model's forward knows how.
        path.loss = "full_logits"
        path.fallbacks.append("the model transforms its logits: loss from the full logits")
        return
    import torch

    head = model.get_output_embeddings()
    frozen = not any(parameter.requires_grad for parameter in head.parameters())
    if liger_unavailable_reason(device) is None and type(head) is torch.nn.Linear and frozen:
        path.loss = "liger_fused_linear_cross_entropy"
        return
    path.loss = "chunked_cross_entropy"
