"""Attention over padding-free batches: several sequences in one row that never see each other.

A padding-free batch (batching.collate) is one row holding every example of a micro-batch
back to back, with position_ids restarting at 0 for each and the cumulative sequence
lengths passed as transformers' `cu_seq_lens_q/k`. Three implementations keep the
sequences apart, chosen once per run by `choose_attention`:

- `flash_attention_2` / `flash_attention_3` on CUDA when the flash-attn package is
  installed: the varlen kernel reads cu_seq_lens, no mask at all;
- `loraforge_varlen_sdpa` (registered here) everywhere else that transformers' attention
  interface reaches: PyTorch SDPA with is_causal on each sequence's slice, so no T x T mask
  is built and no score between two sequences is computed (on CUDA SDPA picks its flash or
  memory-efficient kernel per slice);
- `sdpa` for a model whose attention does not go through the interface: transformers sees
  the restarting position_ids and builds a block-diagonal causal mask (dense, exact).
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import torch
from transformers import AttentionInterface

VARLEN_SDPA = "loraforge_varlen_sdpa"


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each sequence of a packed row; query/key/value are (B, heads, T, dim).

    Without cu_seq_lens (a plain batch, e.g. generation) it is one causal SDPA call, with the
    padding mask transformers passes when there is one.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: repeat the key/value heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if cu_seq_lens_q is None:
        output = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            is_causal=attention_mask is None and query.shape[2] > 1,
            scale=scaling,
        )
        return output.transpose(1, 2).contiguous(), None
    bounds = cu_seq_lens_q.tolist()
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
        )
        for start, end in itertools.pairwise(bounds)
        if end > start
    ]
    output = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)


def flash_attention_available() -> str | None:
    """The transformers name of an installed flash-attention varlen kernel, if any."""
    if importlib.util.find_spec("flash_attn_interface") is not None:
        return "flash_attention_3"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def choose_attention(model: Any, device: str) -> str:
    """The attention implementation for padding-free batches on `device` (see module doc)."""
    if device.startswith("cuda"):
        flash = flash_attention_available()
        if flash is not None:
            return flash
    if getattr(model, "_supports_attention_backend", False):
        return VARLEN_SDPA
    return "sdpa"


def set_attention(model: Any, device: str) -> str:
    """Switch the loaded model to the chosen implementation; its name, as it ran."""
    name = choose_attention(model, device)
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError):  # a model that refuses it keeps masked SDPA
        name = "sdpa"
        model.set_attn_implementation(name)
    return str(model.config._attn_implementation)
