"""Packing, length grouping and a data order that is a pure function of (seed, epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker.training.batching import build_plan, collate, pack_rows
from worker.training.data import IGNORE_INDEX, TokenizedExample
from worker.training.tiny import ensure_tiny_model


def example(length: int, offset: int = 10) -> TokenizedExample:
    ids = [offset + i for i in range(length)]
    return TokenizedExample(input_ids=ids, labels=list(ids))


def test_pack_rows_never_exceeds_the_limit_and_keeps_every_example() -> None:
    lengths = [5, 9, 3, 7, 2, 8]
    rows = pack_rows(lengths, max_seq_length=12)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)


def test_pack_rows_fills_rows_whatever_the_dataset_order() -> None:
    # In this order next-fit would need six rows; best-fit decreasing pairs each 6 with a 4.
    lengths = [6, 6, 6, 6, 4, 4, 4, 4]
    rows = pack_rows(lengths, max_seq_length=10)
    assert [sum(lengths[i] for i in row) for row in rows] == [10, 10, 10, 10]
    assert pack_rows(lengths, max_seq_length=10) == rows


def test_packed_row_restarts_positions_and_masks_each_examples_first_label() -> None:
    examples = [example(3), example(2, offset=50)]
    batch = collate(examples, [(0, 1)], pad_id=0, packing=True)
    assert batch.attention_mask is None
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, 51]]
    assert batch.trained_tokens == 3


def test_packed_examples_do_not_attend_to_each_other(models_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(models_dir)).eval()
    examples = [example(6, offset=20), example(4, offset=80), example(5, offset=140)]
    packed = collate(examples, [(0, 1, 2)], pad_id=0, packing=True)
    with torch.no_grad():
        packed_logits = model(**packed.model_inputs("cpu"), use_cache=False).logits[0]
        start = 0
        for item in examples:
            alone = torch.tensor([item.input_ids])
            logits = model(input_ids=alone, use_cache=False).logits[0]
            segment = packed_logits[start : start + len(item.input_ids)]
            torch.testing.assert_close(segment, logits, atol=1e-5, rtol=1e-5)
            start += len(item.input_ids)


def padded_tokens(plan: Any, examples: list[TokenizedExample]) -> int:
    total = 0
    for index in range(plan.batches_per_epoch):
        batch = collate(examples, plan.micro_batch(index), pad_id=0, packing=False)
        total += batch.input_ids.numel() - batch.tokens
    return total


def test_length_grouping_pads_less_than_a_random_order() -> None:
    lengths = [
        int(n) for n in torch.randint(4, 60, (64,), generator=torch.Generator().manual_seed(0))
    ]
    examples = [example(n) for n in lengths]
    grouped = build_plan(examples, batch_size=4, seed=1, packing=False, max_seq_length=64)
    shuffled = build_plan(examples, batch_size=4, seed=1, packing=False, max_seq_length=64)
    shuffled.group_by_length = False
    assert padded_tokens(grouped, examples) < padded_tokens(shuffled, examples) / 4


def test_batch_order_is_a_function_of_seed_and_epoch() -> None:
    examples = [example(n) for n in range(3, 23)]

    def order(seed: int, epoch: int) -> list[list[tuple[int, ...]]]:
        plan = build_plan(examples, batch_size=4, seed=seed, packing=False, max_seq_length=64)
        first = epoch * plan.batches_per_epoch
        return [plan.micro_batch(i) for i in range(first, first + plan.batches_per_epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    epoch_rows = sorted(i for batch in order(1, 1) for row in batch for i in row)
    assert epoch_rows == list(range(len(examples)))
