"""Merged export: the adapter folded into a 16-bit copy of the base, saved as safetensors.

Never merged into 4-bit weights: rounding B A into NF4 changes generations. The base is
reloaded in 16-bit (or fp32), the adapter applied, and the merged model's logits compared
with the unmerged 16-bit base + adapter on a few rows; the max difference is recorded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.catalog import CatalogEntry
from worker.training.models import load_base_model, resolve_model_dir

DEFAULT_SHARD_SIZE = "5GB"
# Held-out rows for the merge check when the caller gives none.
DEFAULT_CHECK_TEXTS = (
    "The capital of France is",
    "Once upon a time there was a baker who",
    "def add(a: int, b: int) -> int:",
)


@dataclass(frozen=True)
class ExportResult:
    """Where the merged model is, and how closely it matches base + adapter."""

    path: Path
    base_model: str
    revision: str | None
    dtype: str
    max_abs_logit_diff: float
    files: list[str]

    def metadata(self) -> dict[str, object]:
        """export.json: what a tenant downloads, so the catalog's names and no server path."""
        fields = asdict(self)
        del fields["path"]
        return fields


@torch.no_grad()
def logits_of(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> list[torch.Tensor]:
    """fp32 logits of each text, one row at a time (no padding to reason about)."""
    device = next(model.parameters()).device
    return [
        model(**tokenizer(text, return_tensors="pt").to(device)).logits.float() for text in texts
    ]


def max_abs_diff(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference over matching tensors."""
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def merge_adapter(
    base: CatalogEntry,
    adapter_dir: Path,
    models_dir: Path,
    *,
    dtype: str = "bfloat16",
    device: str = "cpu",
    check_texts: Sequence[str] = DEFAULT_CHECK_TEXTS,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, float]:
    """Base in `dtype` + adapter, merged; returns the merged model and the logit difference."""
    model_dir = resolve_model_dir(base, models_dir)
    torch_dtype = getattr(torch, dtype)
    model = load_base_model(model_dir, base, dtype=torch_dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    peft_model.eval()
    before = logits_of(peft_model, tokenizer, check_texts)
    merged = peft_model.merge_and_unload()
    after = logits_of(merged, tokenizer, check_texts)
    return merged, tokenizer, max_abs_diff(before, after)  # type: ignore[return-value]


def export_merged(
    base: CatalogEntry,
    adapter_dir: Path,
    output_dir: Path,
    models_dir: Path,
    *,
    dtype: str = "bfloat16",
    device: str = "cpu",
    max_shard_size: str | int = DEFAULT_SHARD_SIZE,
    check_texts: Sequence[str] = DEFAULT_CHECK_TEXTS,
) -> ExportResult:
    """Merge the adapter into a 16-bit base and save it (sharded safetensors + tokenizer)."""
    merged, tokenizer, difference = merge_adapter(
        base, adapter_dir, models_dir, dtype=dtype, device=device, check_texts=check_texts
    )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{output_dir.name}.staging-"
    # Left by an earlier attempt killed mid-save. Only the lease holder's save counts: an
    # attempt that stalled past its lease and loses its staging here fails, and its fenced
    # write of that failure is refused.
    for leftover in output_dir.parent.glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=output_dir.parent))
    try:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)
        result = ExportResult(
            path=output_dir,
            base_model=base.base_model_name,
            revision=base.revision,
            dtype=dtype,
            max_abs_logit_diff=difference,
            files=sorted(p.name for p in staging.iterdir()),
        )
        (staging / "export.json").write_text(json.dumps(result.metadata(), indent=2))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
