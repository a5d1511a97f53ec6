"""Packing, length grouping, passes, and a data order that is a pure function of (seed, epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker.training.batching import build_plan, collate, pack_rows, split_passes
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


def padding_share(lengths: list[int], groups: list[list[int]]) -> float:
    positions = sum(max(lengths[i] for i in group) * len(group) for group in groups)
    return 1 - sum(lengths) / positions


def test_split_passes_meets_the_padding_target_with_few_passes() -> None:
    lengths = [900, 205, 210, 890, 200, 640, 215, 630]
    groups = split_passes(lengths, target=0.02)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert padding_share(lengths, groups) <= 0.02
    # The three length clusters: no fewer passes can meet 2% and no more are taken.
    assert sorted(sorted(lengths[i] for i in group) for group in groups) == [
        [200, 205, 210, 215],
        [630, 640],
        [890, 900],
    ]
    assert padding_share(lengths, [list(range(len(lengths)))]) > 0.3


def test_split_passes_keeps_similar_lengths_in_one_pass_and_respects_the_cap() -> None:
    assert split_passes([100, 99, 100, 98]) == [[0, 2, 1, 3]]
    lengths = [2**k for k in range(10)]
    capped = split_passes(lengths, target=0.0, max_passes=3)
    assert len(capped) == 3
    assert split_passes(lengths, target=0.0, max_passes=10) == [[i] for i in range(9, -1, -1)]


def test_plan_passes_hold_exactly_the_micro_batchs_rows() -> None:
    lengths = [
        int(n) for n in torch.randint(4, 200, (40,), generator=torch.Generator().manual_seed(3))
    ]
    examples = [example(n) for n in lengths]
    plan = build_plan(examples, batch_size=8, seed=1, packing=False, max_seq_length=256)
    for index in range(2 * plan.batches_per_epoch):
        rows = [row for group in plan.passes(index) for row in group]
        assert sorted(rows) == sorted(plan.micro_batch(index))


def test_passes_give_the_gradient_of_one_padded_batch(models_dir: Path) -> None:
    """Summed token losses over passes, normalised once: the one-pass gradient, less padding."""
    from transformers import AutoModelForCausalLM

    from worker.training.data import IGNORE_INDEX as ignore

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(models_dir))
    examples = [example(n, offset=10 + 3 * i) for i, n in enumerate((40, 6, 40, 6, 40))]
    rows = [(i,) for i in range(len(examples))]
    groups = split_passes([len(e.input_ids) for e in examples])
    assert len(groups) == 2

    def gradients(batches: list[Any]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        tokens = sum(batch.trained_tokens for batch in batches)
        for batch in batches:
            logits = model(**batch.model_inputs("cpu"), use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1),
                batch.labels[:, 1:].flatten(),
                ignore_index=ignore,
                reduction="sum",
            )
            (loss / tokens).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    whole = gradients([collate(examples, rows, pad_id=0, packing=False)])
    passes = [collate(examples, [rows[i] for i in group], 0, False) for group in groups]
    assert sum(batch.input_ids.numel() for batch in passes) == 3 * 40 + 2 * 6
    split = gradients(passes)
    assert whole.keys() == split.keys()
    for name, grad in whole.items():
        torch.testing.assert_close(split[name], grad, atol=1e-6, rtol=1e-4, msg=name)
