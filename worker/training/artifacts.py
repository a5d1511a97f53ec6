"""The final adapter directory: PEFT adapter, tokenizer, model card and provenance.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from worker.training.config import TrainingConfig, TrainingPaths

LIBRARIES = (
    "loraforge",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "liger-kernel",
    "flash-attn",
)
HASH_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the result."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_provenance(
    config: TrainingConfig,
    paths: TrainingPaths,
    summary: dict[str, Any],
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to reproduce the adapter: data hashes, spec, versions, base model."""
    entry = config.model
    return {
        # The catalog's names only: a tenant downloads this file, and the server's
        # directories are none of its business.
        "base_model": {
            "id": entry.id,
            "source": entry.source,
            "hub_id": entry.hub_id,
            "revision": entry.revision,
        },
        "training_file_sha256": file_sha256(paths.train_file),
        "validation_file_sha256": (
            file_sha256(paths.validation_file) if paths.validation_file else None
        ),
        "seed": config.seed,
        # The fine-tuned model (or checkpoint) this adapter was trained further from.
        "parent": config.spec.parent.model_dump(mode="json") if config.spec.parent else None,
        "resolved_spec": config.spec.model_dump(mode="json"),
        "device": config.device,
        "compute_dtype": config.compute_dtype,
        # The attention implementation, loss path and fused kernels this run took.
        "compute_path": compute,
        "libraries": library_versions(),
        "result": summary,
    }


def model_card(config: TrainingConfig, summary: dict[str, Any]) -> str:
    """A README.md in the Hugging Face model-card shape, with the numbers that matter."""
    spec = config.spec
    quantization = spec.quantization
    method = "QLoRA" if quantization.bits == 4 else "LoRA"
    base = config.model.base_model_name
    return "\n".join(
        [
            "---",
            f"base_model: {base}",
            "library_name: peft",
            f"tags: [loraforge, lora, qlora{', dpo' if spec.method == 'dpo' else ''}]",
            "---",
            "",
            f"# LoRA adapter for {config.model.id}",
            "",
            f"Trained with loraforge ({method}: quantization bits={quantization.bits}, "
            f"{quantization.quant_type}, double_quant={quantization.double_quant}).",
            "",
            *(
                [
                    f"- DPO on preference pairs: beta={spec.hyperparameters.beta}, reference = "
                    "the model as training started (dropout off)"
                ]
                if spec.method == "dpo"
                else []
            ),
            f"- LoRA: r={spec.lora.r}, lora_alpha={spec.lora.alpha}, "
            f"dropout={spec.lora.dropout}, target_modules={spec.lora.target_modules}",
            f"- epochs={spec.hyperparameters.n_epochs}, "
            f"batch_size={spec.hyperparameters.batch_size}, "
            f"learning_rate={spec.training.learning_rate}, optimizer={spec.training.optimizer}",
            f"- steps={summary.get('global_step')}, "
            f"trained_tokens={summary.get('trained_tokens')}, "
            f"final train loss={summary.get('final_loss')}, "
            f"validation loss={summary.get('full_valid_loss')}",
            "",
            "Load it with `peft.PeftModel.from_pretrained(base_model, this_directory)`.",
            "provenance.json records the dataset hashes, the resolved spec and library versions.",
            "",
        ]
    )


ADAPTER_STAGING_PREFIX = ".adapter-"


def discard_adapter_staging(output_dir: Path) -> list[Path]:
    """Remove the staging directories of adapter saves that were interrupted; the paths."""
    if not output_dir.is_dir():
        return []
    leftovers = [p for p in output_dir.iterdir() if p.name.startswith(ADAPTER_STAGING_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def save_peft_adapter(model: PeftModel, directory: Path) -> None:
    """adapter_config.json and the LoRA weights (safetensors), with no network call.

    peft's default ("auto") compares the vocabulary with the base model's config.json,
    fetched from the Hugging Face Hub when the base's name (the catalog's) is no local
    directory: a request per save, on workers that may have no network. The engine never
    resizes or trains the embeddings, so there is nothing of theirs to save.
    """
    model.save_pretrained(str(directory), save_embedding_layers=False)


def save_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path,
    provenance: dict[str, Any],
    card: str,
) -> Path:
    """Write the adapter directory atomically (temp dir, then rename into place)."""
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=ADAPTER_STAGING_PREFIX, dir=adapter_dir.parent))
    try:
        save_peft_adapter(model, staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(card)
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2))
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        staging.rename(adapter_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return adapter_dir
