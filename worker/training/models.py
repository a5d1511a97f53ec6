"""Load a base model (4-bit, 8-bit or 16/32-bit), prepare it for k-bit training, add LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bitsandbytes as bnb
import torch
from huggingface_hub import snapshot_download
from peft import (
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.architectures import unknown_target_message, unknown_target_module
from app.catalog import CatalogEntry
from worker.training.attention import set_attention
from worker.training.builders import build_bnb_config, build_lora_config
from worker.training.config import TrainingConfig
from worker.training.errors import TrainingInputError
from worker.training.kernels import ComputePath, apply_liger_kernels, choose_loss
from worker.training.tiny import CHAT_TEMPLATE, ensure_tiny_model


@dataclass
class LoadedModel:
    """The trainable PEFT model and the tokenizer that goes with it."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    model_dir: Path
    compute: ComputePath


def resolve_model_dir(entry: CatalogEntry, models_dir: Path) -> Path:
    """A local directory holding the base model's safetensors weights; never downloads."""
    if entry.builtin:
        return ensure_tiny_model(models_dir)
    if entry.path:
        directory = Path(entry.path).expanduser()
    else:
        try:
            snapshot = snapshot_download(
                entry.hub_id or "", revision=entry.revision, local_files_only=True
            )
            directory = Path(str(snapshot))
        except Exception as exc:  # huggingface_hub raises several types for a cache miss
            raise TrainingInputError(
                "model_not_found",
                f"model {entry.id!r} ({entry.hub_id}@{entry.revision or 'main'}) is not in the "
                "local Hugging Face cache; download it on the worker first",
                "model",
            ) from exc
    check_model_dir(entry, directory)
    return directory


def check_model_dir(entry: CatalogEntry, directory: Path) -> None:
    """Refuse a missing model and pickle-only weights (loading a pickle can run code)."""
    if not (directory / "config.json").is_file():
        # The message reaches the tenant: it names the model, never the server's path.
        raise TrainingInputError(
            "model_not_found",
            f"model {entry.id!r} is not installed on this worker (no config.json where the "
            "catalog points)",
            "model",
        )
    if not any(directory.glob("*.safetensors")):
        raise TrainingInputError(
            "model_weights_not_safetensors",
            f"model {entry.id!r} has no .safetensors weights; only safetensors are loaded "
            "(pickle weights can run code). Convert the checkpoint to safetensors.",
            "model",
        )


def load_tokenizer(model_dir: Path, entry: CatalogEntry) -> PreTrainedTokenizerBase:
    """The base model's fast tokenizer, with a pad token and a chat template guaranteed."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=entry.trust_remote_code)
    if not tokenizer.is_fast:
        raise TrainingInputError(
            "unsupported_tokenizer", f"model {entry.id!r} has no fast tokenizer", "model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of loss and attention
    if not tokenizer.chat_template:
        # Base models often ship none; it is saved with the adapter, so inference matches.
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_base_model(
    model_dir: Path,
    entry: CatalogEntry,
    *,
    dtype: torch.dtype,
    device: str,
    quantization_config: BitsAndBytesConfig | None = None,
) -> PreTrainedModel:
    """Load safetensors weights only, remote code only when the catalog entry allows it.

    The model is named after the catalog entry, not after `model_dir`: peft writes that name
    into adapter_config.json and the model card, which tenants download.
    """
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=quantization_config,
        dtype=dtype,
        device_map={"": device},
        use_safetensors=True,
        trust_remote_code=entry.trust_remote_code,
        attn_implementation="sdpa",
    )
    model.name_or_path = model.config.name_or_path = entry.base_model_name
    return model


def check_target_modules(model: torch.nn.Module, target_modules: str | list[str]) -> None:
    """Name the unknown target module and the valid ones, before peft's terse error."""
    if isinstance(target_modules, str):
        return
    linear_names = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    ]
    unknown = unknown_target_module(target_modules, linear_names)
    if unknown is not None:
        raise TrainingInputError(
            "unknown_target_module",
            unknown_target_message(unknown, linear_names),
            "lora.target_modules",
        )


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each block in backward; non-reentrant, so frozen inputs need no grad hack."""
    # transformers 5 renamed gradient_checkpointing_enable; older releases only have that.
    enable = getattr(model, "activation_checkpointing_enable", None)
    enable = enable or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.config.use_cache = False


def inference_mode(model: torch.nn.Module) -> None:
    """model.eval() (no dropout), but bitsandbytes' 4-bit layers stay in training mode.

    In eval mode on a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference
    in place, and backward through them is silently wrong afterwards (no autograd kernel):
    an evaluation in the middle of training would corrupt the steps after it. The layers have
    no dropout, so training mode changes nothing else.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()


def load_parent_adapter(model: PeftModel, weights: Path, device: str) -> None:
    """Start from a fine-tuned parent's LoRA weights: every LoRA tensor of the model is set
    from them, or the job fails saying the parent's adapter does not fit."""
    state = load_file(str(weights), device=device)
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # a shape differs
        raise parent_mismatch(str(exc).splitlines()[0]) from exc
    # peft returns torch's load_state_dict result (a namedtuple its stubs leave untyped)
    unexpected: list[str] = list(getattr(result, "unexpected_keys", []))
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    if unexpected or missing:
        raise parent_mismatch(f"unexpected {unexpected[:3]}, missing {missing[:3]}")


def parent_mismatch(detail: str) -> TrainingInputError:
    return TrainingInputError(
        "parent_lora_mismatch",
        f"the parent model's adapter does not fit this job's LoRA layers ({detail})",
        "model",
    )


def load_model(
    config: TrainingConfig, models_dir: Path, *, parent_adapter: Path | None = None
) -> LoadedModel:
    """Base model quantized as the spec asks, prepared for k-bit training, wrapped in LoRA
    (initialized from a fine-tuned parent's adapter when the job continues one)."""
    model_dir = resolve_model_dir(config.model, models_dir)
    tokenizer = load_tokenizer(model_dir, config.model)
    base = load_base_model(
        model_dir,
        config.model,
        dtype=config.torch_dtype,
        device=config.device,
        quantization_config=build_bnb_config(config),
    )
    if config.quantization.bits is not None:
        # Casts the unquantized parameters (norms, embeddings, head) to fp32 for stable training.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if config.training.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    check_target_modules(base, config.lora.target_modules)
    compute = configure_compute(base, config.device)
    model = get_peft_model(base, build_lora_config(config), revision=config.model.revision)
    if parent_adapter is not None:
        load_parent_adapter(model, parent_adapter, config.device)  # type: ignore[arg-type]
    choose_loss(model.get_base_model(), compute, config.device)
    return LoadedModel(model=model, tokenizer=tokenizer, model_dir=model_dir, compute=compute)  # type: ignore[arg-type]


def configure_compute(base: PreTrainedModel, device: str) -> ComputePath:
    """Attention for padding-free batches and, on CUDA, Liger's kernels; what was chosen.

    Call before wrapping in LoRA, then `kernels.choose_loss` on the wrapped model's base
    (whether the head trains is known only then).
    """
    compute = ComputePath(attention=set_attention(base, device))
    apply_liger_kernels(base, compute, device)
    return compute
