"""Real PEFT adapters for the tiny model without training them: LoRA on every linear layer
with random A and B (init_lora_weights=False), so each changes what the model says."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from worker.training.models import inference_mode
from worker.training.tiny import ensure_tiny_model


def make_adapter(models_dir: Path, target: Path, seed: int) -> Path:
    """Save a random-weights adapter (and the base's tokenizer) in `target`."""
    base_dir = ensure_tiny_model(models_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(base, config).save_pretrained(target)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(target)
    return target


def nf4_base(models_dir: Path) -> AutoModelForCausalLM:
    """The tiny base as the inference server loads it on the CPU: NF4, double quant, fp32."""
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return AutoModelForCausalLM.from_pretrained(
        ensure_tiny_model(models_dir),
        quantization_config=quantization,
        dtype=torch.float32,
        device_map={"": "cpu"},
    )


def reference_chat(
    models_dir: Path, adapter: Path | None, messages: list[dict[str, str]], max_new_tokens: int
) -> str:
    """What transformers' generate says greedily for `messages`: on the adapter with peft's
    PeftModel.from_pretrained, or on the bare base. Its 4-bit layers stay in training mode,
    as in training and in the inference server: in eval mode, on a CPU with AVX512-BF16,
    bitsandbytes repacks them at their first forward and answers depend on call order."""
    model = nf4_base(models_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter or ensure_tiny_model(models_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    inference_mode(model)  # the bitsandbytes path training takes, as the server does
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
