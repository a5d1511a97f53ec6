"""Builders that turn our config into library objects (as trl's get_quantization_config does)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import bitsandbytes as bnb
import torch
from peft import LoraConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import BitsAndBytesConfig, get_scheduler

from app.schemas.spec import QuantizationSpec
from worker.training.config import TrainingConfig

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
    "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
    "adamw_8bit": bnb.optim.AdamW8bit,
    "adamw_torch": torch.optim.AdamW,
}


def build_bnb_config(config: TrainingConfig) -> BitsAndBytesConfig | None:
    """NF4 (or FP4) with double quantization, or LLM.int8, or None for 16/32-bit LoRA."""
    return build_quantization_config(config.quantization, config.torch_dtype)


def build_quantization_config(
    quantization: QuantizationSpec, compute_dtype: torch.dtype
) -> BitsAndBytesConfig | None:
    """build_bnb_config for a quantization spec alone (the inference server's bases)."""
    if quantization.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def build_lora_config(config: TrainingConfig) -> LoraConfig:
    """LoRA on the spec's target modules ("all-linear" = every linear layer of the blocks)."""
    lora = config.lora
    target_modules = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts a float scale
        lora_dropout=lora.dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainingConfig) -> Optimizer:
    """The optimizer the spec names; bitsandbytes' paged ones absorb memory spikes on CUDA."""
    training = config.training
    optimizer_class: Any = OPTIMIZERS[training.optimizer]
    return optimizer_class(  # type: ignore[no-any-return]
        list(parameters), lr=training.learning_rate, weight_decay=training.weight_decay
    )


def build_scheduler(optimizer: Optimizer, config: TrainingConfig, total_steps: int) -> LRScheduler:
    """transformers' schedule of the spec's name, with warmup_ratio of the steps."""
    warmup_steps = math.ceil(config.training.warmup_ratio * total_steps)
    return get_scheduler(  # type: ignore[no-any-return]
        config.training.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
    )
