"""The memory estimator (pure Python) against its own invariants and the tiny model's bytes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from app.memory import (
    TINY_RANDOM_LLAMA_SHAPE,
    MemoryEstimate,
    ModelShape,
    estimate_memory,
)
from tests.worker.factories import build_config

# A Llama-3-8B-shaped model: big enough that the parts' proportions are realistic.
LLAMA_8B = ModelShape.from_config_dict(
    {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    }
)


def estimate(shape: ModelShape = LLAMA_8B, **options: Any) -> MemoryEstimate:
    return estimate_memory(build_config(**options).spec, shape)


def test_fewer_bits_need_less_memory() -> None:
    four = estimate(quantization={"bits": 4})
    eight = estimate(quantization={"bits": 8})
    sixteen = estimate(quantization={"bits": None, "compute_dtype": "bfloat16"})
    assert four.linear_weights < eight.linear_weights < sixteen.linear_weights
    assert four.total < eight.total < sixteen.total
    # 16-bit Llama-8B linear layers: ~6.98e9 weights x 2 bytes.
    assert sixteen.linear_weights == pytest.approx(2 * LLAMA_8B.linear_params)


def test_quantized_bits_per_weight_follow_qlora() -> None:
    with_dq = estimate(quantization={"bits": 4, "double_quant": True})
    without = estimate(quantization={"bits": 4, "double_quant": False})
    assert with_dq.bits_per_quantized_weight == pytest.approx(4.127, abs=1e-3)
    assert without.bits_per_quantized_weight == pytest.approx(4.5)
    assert with_dq.linear_weights * 8 / LLAMA_8B.linear_params == pytest.approx(4.127, abs=1e-3)


def test_gradient_checkpointing_lowers_activations() -> None:
    on = estimate(gradient_checkpointing=True, max_seq_length=2048)
    off = estimate(gradient_checkpointing=False, max_seq_length=2048)
    assert on.activations < off.activations / 4
    assert on.total < off.total


def test_fp32_compute_keeps_no_16_bit_copies() -> None:
    # The 16-bit path keeps a cast copy of each linear layer's input and fp32 norm inputs;
    # fp32 elements are twice the size but have no copies: about 1.7x the bytes, not 2x.
    blocks_only = dataclasses.replace(LLAMA_8B, vocab_size=2)  # logits out of the way
    options = {"gradient_checkpointing": False}
    bf16 = estimate(blocks_only, quantization={"compute_dtype": "bfloat16"}, **options)
    fp32 = estimate(blocks_only, quantization={"compute_dtype": "float32"}, **options)
    assert 1.5 * bf16.activations < fp32.activations < 1.8 * bf16.activations


def test_activations_grow_with_batch_tokens() -> None:
    short = estimate(max_seq_length=512)
    long = estimate(max_seq_length=2048)
    assert long.activations == pytest.approx(4 * short.activations)


def test_eight_bit_optimizer_state_is_a_quarter_of_the_32_bit_one() -> None:
    paged8 = estimate(optimizer="paged_adamw_8bit")
    paged32 = estimate(optimizer="paged_adamw_32bit")
    assert paged8.optimizer_state * 4 == paged32.optimizer_state
    assert paged8.lora_params == paged32.lora_params > 0


def test_lora_params_count_only_the_targeted_layers() -> None:
    every = estimate(lora={"r": 16})
    attention = estimate(lora={"r": 16, "target_modules": ["q_proj", "v_proj"]})
    h, kv, layers = 4096, 1024, 32
    assert attention.lora_params == 4 * 16 * ((h + h) + (h + kv)) * layers
    assert every.lora_params > attention.lora_params


def test_shape_reads_nested_text_config_and_defaults_kv_heads() -> None:
    shape = ModelShape.from_config_dict(
        {
            "text_config": {
                "vocab_size": 10,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            }
        }
    )
    assert shape.num_key_value_heads == 4
    assert shape.kv_width == 64


@pytest.mark.slow
def test_estimate_matches_the_tiny_models_real_parameter_bytes(models_dir: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from worker.training.tiny import ensure_tiny_model

    model = AutoModelForCausalLM.from_pretrained(
        ensure_tiny_model(models_dir),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    quantized, other = 0, 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            # packed 4-bit weights, 8-bit absmax per 64 weights, fp32 absmax per 256 of those
            quantized += module.weight.numel() * module.weight.element_size()
            quantized += state.absmax.numel() * state.absmax.element_size()
            quantized += state.state2.absmax.numel() * state.state2.absmax.element_size()
        else:
            other += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    result = estimate(TINY_RANDOM_LLAMA_SHAPE, quantization={"compute_dtype": "float32"})
    assert result.linear_weights == pytest.approx(quantized, rel=0.01)
    assert result.embeddings == other  # fp32 here: compute_dtype float32


# Measured with worker/training on an H200 (torch.cuda.max_memory_allocated), a random Llama
# of TinyLlama-1.1B's shape, r=16, paged_adamw_8bit, sequences of 1024 tokens.
H200_SHAPE = ModelShape(32000, 2048, 5632, 16, 32, 8, False)
H200_PEAK_4BIT_BATCH4 = {True: 3_835_289_088, False: 13_368_090_112}  # by gradient_checkpointing
# Extra bytes per extra token (batch 4 minus batch 1, same process): robust to allocator leftovers.
H200_BYTES_PER_TOKEN = {
    (4, True): (4_222_318_080 - 2_201_595_392) / 3072,
    (4, False): (14_139_061_760 - 4_924_655_104) / 3072,
    (8, True): (7_035_356_672 - 2_883_793_408) / 3072,
    (8, False): (15_881_766_400 - 5_149_442_560) / 3072,
    (None, True): (4_230_767_104 - 2_430_050_816) / 3072,
    (None, False): (11_428_225_536 - 4_304_056_832) / 3072,
}


def h200_estimate(batch_size: int, bits: int | None, checkpointing: bool) -> MemoryEstimate:
    spec = build_config(
        max_seq_length=1024,
        gradient_checkpointing=checkpointing,
        lora={"r": 16, "alpha": 32},
        quantization={"bits": bits},
    ).spec
    spec = spec.model_copy(
        update={
            "hyperparameters": spec.hyperparameters.model_copy(update={"batch_size": batch_size})
        }
    )
    return estimate_memory(spec, H200_SHAPE)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_estimate_is_close_to_the_measured_h200_peak(checkpointing: bool) -> None:
    result = h200_estimate(4, 4, checkpointing)
    measured = H200_PEAK_4BIT_BATCH4[checkpointing]
    assert result.total - result.cuda_context == pytest.approx(measured, rel=0.06)


@pytest.mark.parametrize(("bits", "checkpointing"), list(H200_BYTES_PER_TOKEN))
def test_per_token_growth_matches_the_h200_within_30_percent(
    bits: int | None, checkpointing: bool
) -> None:
    per_token = (
        h200_estimate(4, bits, checkpointing).total - h200_estimate(1, bits, checkpointing).total
    ) / 3072
    measured = H200_BYTES_PER_TOKEN[(bits, checkpointing)]
    # Never below the measurement by more than 5%: an estimate that is low admits jobs that OOM.
    assert 0.95 * measured < per_token < 1.3 * measured
