"""Padding-free batches: one row per micro-batch, the loss and gradients of separate rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.worker.factories import chat_rows, write_jsonl
from worker.training.attention import VARLEN_SDPA
from worker.training.batching import build_plan, collate, collate_padding_free
from worker.training.data import IGNORE_INDEX, TokenizedExample, load_dataset
from worker.training.loss import causal_lm_loss
from worker.training.tiny import ensure_tiny_model

FORMATS: dict[str, list[dict[str, Any]]] = {
    "chat": chat_rows(repeat=3),
    "prompt_completion": [
        {"prompt": f"Question {i}: what is {i} plus {i}?", "completion": f" It is {2 * i}."}
        for i in range(12)
    ],
    "text": [{"text": f"Line {i} of a story " + "about a fox " * (i % 4 + 1)} for i in range(12)],
}


def example(length: int, offset: int = 10) -> TokenizedExample:
    ids = [offset + i for i in range(length)]
    return TokenizedExample(input_ids=ids, labels=list(ids))


def test_padding_free_batch_is_one_row_with_restarting_positions() -> None:
    batch = collate_padding_free([example(3), example(2, offset=50), example(4)], [(0, 1), (2,)])
    assert batch.input_ids.shape == (1, 9)
    assert batch.attention_mask is None
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, 51, -100, 11, 12, 13]]
    assert batch.sequence_starts is not None
    assert batch.sequence_starts.tolist() == [0, 3, 5, 9]
    assert (batch.tokens, batch.trained_tokens, batch.max_sequence_length) == (9, 6, 4)
    inputs = batch.model_inputs("cpu")
    assert inputs["cu_seq_lens_q"] is inputs["cu_seq_lens_k"]
    assert inputs["max_length_q"] == 4


def lora_model(models_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        ensure_tiny_model(models_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(base, config)
    # B starts at zero; random B makes the LoRA gradients of A non-zero too.
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return model


def lora_gradients(model: Any) -> dict[str, torch.Tensor]:
    grads = {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }
    model.zero_grad(set_to_none=True)
    return grads


def separate_rows(model: Any, examples: list[TokenizedExample]) -> tuple[float, dict[str, Any]]:
    """The reference: each example alone in a row, full logits, summed CE / labelled tokens."""
    model.set_attn_implementation("sdpa")
    batches = [collate(examples, [(i,)], pad_id=0, packing=False) for i in range(len(examples))]
    tokens = sum(batch.trained_tokens for batch in batches)
    total = 0.0
    for batch in batches:
        logits = model(**batch.model_inputs("cpu"), use_cache=False).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1),
            batch.labels[:, 1:].flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        (loss / tokens).backward()
        total += loss.item()
    return total / tokens, lora_gradients(model)


def padding_free(
    model: Any, examples: list[TokenizedExample], rows: list[Any], attention: str
) -> Any:
    """The engine's computation: one padding-free row, chunked cross-entropy."""
    model.set_attn_implementation(attention)
    batch = collate_padding_free(examples, rows)
    output = causal_lm_loss(
        model.get_base_model(), batch.model_inputs("cpu"), batch.labels, "chunked_cross_entropy"
    )
    (output.loss / batch.trained_tokens).backward()
    return float(output.loss) / batch.trained_tokens, lora_gradients(model)


@pytest.mark.parametrize("packing", [False, True], ids=["rows", "packing"])
@pytest.mark.parametrize("data_format", sorted(FORMATS))
def test_padding_free_step_equals_one_example_per_row(
    data_format: str, packing: bool, tmp_path: Path, models_dir: Path, tokenizer: Any
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", FORMATS[data_format])
    examples = load_dataset(path, tokenizer, max_seq_length=64, train_on="assistant").examples
    plan = build_plan(examples, batch_size=3, seed=3, packing=packing, max_seq_length=160)
    rows = plan.micro_batch(0)
    in_batch = [i for row in rows for i in row]
    assert len(rows) >= 2
    assert len(in_batch) > 2 * len(rows) if packing else len(in_batch) == 3
    model = lora_model(models_dir)
    expected_loss, expected = separate_rows(model, [examples[i] for i in in_batch])
    for attention in (VARLEN_SDPA, "sdpa"):  # "sdpa": the block-diagonal mask fallback
        loss, grads = padding_free(model, examples, rows, attention)
        assert loss == pytest.approx(expected_loss, abs=1e-5)
        assert grads.keys() == expected.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_varlen_attention_without_sequence_bounds_is_causal_sdpa(models_dir: Path) -> None:
    model = lora_model(models_dir).eval()
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        expected = model(input_ids=ids).logits
        model.set_attn_implementation(VARLEN_SDPA)
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
