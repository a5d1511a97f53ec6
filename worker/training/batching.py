"""Rows, batches and a deterministic order of them, so a resumed run sees the same data.

Without packing each row is one example. With packing, examples are placed into rows of at
most max_seq_length tokens by best-fit decreasing (longest first, each into the fullest row it
fits). Either way batches are grouped by row length (shuffle, then sort within mega-batches
of 32 batches), and the batch order of epoch e depends only on (seed, e): a step number is a
complete data position.

The engine computes a micro-batch padding-free (`collate_padding_free`): every example of its
rows back to back in one sequence, position_ids restarting at 0 for each, the cumulative
sequence lengths passed to attention (attention.py keeps the sequences apart). One pass, no
padding, and the loss and gradients of the rows computed one by one. `collate` pads rows
instead (packed rows get restarting position_ids and no mask): the reference the tests
compare with, and what `split_passes` plans for the benchmarks' padding figures.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.training.data import IGNORE_INDEX, TokenizedExample

MEGABATCH_FACTOR = 32
# A batch is computed in the fewest forward/backward passes (at most MAX_PASSES) whose padding
# is at most this share of its tokens.
PASS_PADDING_TARGET = 0.02
MAX_PASSES = 8
# Keeps per-epoch permutations of different seeds apart.
EPOCH_SEED_STRIDE = 100_003

Row = tuple[int, ...]  # indices of the examples forming one row


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    tokens: int  # non-pad input tokens
    trained_tokens: int  # labels the loss is taken on (after the one-token shift)
    # Padding-free: where each sequence starts in the row, and the row's end (int32, as
    # flash-attention's varlen kernels take it); None for a padded batch.
    sequence_starts: torch.Tensor | None = None
    max_sequence_length: int = 0

    def model_inputs(self, device: str) -> dict[str, Any]:
        """Keyword arguments for the model's forward, on `device`."""
        inputs = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.sequence_starts is not None:
            inputs["cu_seq_lens_q"] = inputs["cu_seq_lens_k"] = self.sequence_starts
        moved: dict[str, Any] = {name: tensor.to(device) for name, tensor in inputs.items()}
        if self.sequence_starts is not None:
            moved["max_length_q"] = moved["max_length_k"] = self.max_sequence_length
        return moved


def pack_rows(lengths: Sequence[int], max_seq_length: int) -> list[Row]:
    """Best-fit decreasing: longest example first, each into the open row it fills the most.

    Rows come out nearly full whatever the dataset's order (next-fit in dataset order left
    11% of a heavy-tailed dataset as padding where this leaves 2%). Deterministic: ties go
    to the earlier example and the earlier row. An example longer than the limit gets a row
    of its own (the data loader has truncated it already).
    """
    rows: list[list[int]] = []
    # (room left, row index), sorted: the first entry with room >= length is the best fit.
    rooms: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        at = bisect.bisect_left(rooms, (length, -1))
        if at < len(rooms):
            room, row = rooms.pop(at)
        else:
            room, row = max_seq_length, len(rows)
            rows.append([])
        rows[row].append(index)
        bisect.insort(rooms, (room - length, row))
    return [tuple(sorted(row)) for row in rows]


@dataclass
class BatchPlan:
    """Which rows make micro-batch i, for any i, across as many epochs as needed."""

    rows: list[Row]
    row_lengths: list[int]
    batch_size: int
    seed: int
    group_by_length: bool
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Row indices of each batch of `epoch`, a pure function of (seed, epoch)."""
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            order = torch.randperm(len(self.rows), generator=generator).tolist()
            if self.group_by_length:
                order = group_by_length(order, self.row_lengths, self.batch_size)
            size = self.batch_size
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            # Grouping fixes which rows go together; the batches still come in a fresh order.
            shuffled = torch.randperm(len(batches), generator=generator).tolist()
            self._epochs = {epoch: [batches[i] for i in shuffled]}
        return self._epochs[epoch]

    def micro_batch(self, index: int) -> list[Row]:
        """The rows of the index-th micro-batch since the start of training."""
        epoch, position = divmod(index, self.batches_per_epoch)
        return [self.rows[row] for row in self.epoch_batches(epoch)[position]]

    def passes(self, index: int) -> list[list[Row]]:
        """The index-th micro-batch's rows, split into passes of similar lengths."""
        epoch, position = divmod(index, self.batches_per_epoch)
        batch = self.epoch_batches(epoch)[position]
        groups = split_passes([self.row_lengths[row] for row in batch])
        return [[self.rows[batch[at]] for at in group] for group in groups]


def split_passes(
    lengths: Sequence[int], target: float = PASS_PADDING_TARGET, max_passes: int = MAX_PASSES
) -> list[list[int]]:
    """Positions of `lengths` in the fewest passes whose padding is at most `target` of them.

    A batch's loss is summed over its tokens and normalised by the step's trained tokens, so
    computing it in several passes (gradients accumulate) gives the gradient of one pass, less
    the padding: batch_size keeps its meaning (examples per step) while a batch of 8 whose
    lengths run from 200 to 900 is not padded to 8 x 900. Each pass is a run of the lengths
    sorted longest first; for k passes the split with the least padding is found by dynamic
    programming, k growing until the target is met (or max_passes, the least padding then).
    Deterministic, so a resumed run computes the same passes.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sizes = [lengths[i] for i in order]
    n, tokens = len(sizes), sum(sizes)
    # best[j]: least positions computed for sizes[:j] in k passes; starts[k][j]: where the
    # last of those k passes starts.
    best = [0.0] + [math.inf] * n
    starts: list[list[int]] = []
    for _ in range(min(n, max_passes)):
        ahead, start = [math.inf] * (n + 1), [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j):
                # sizes[i] is the longest of sizes[i:j]: the pass is padded to it.
                cost = best[i] + sizes[i] * (j - i)
                if cost < ahead[j]:
                    ahead[j], start[j] = cost, i
        best = ahead
        starts.append(start)
        if best[n] - tokens <= target * tokens:
            break
    groups, end = [], n
    for start in reversed(starts):
        if end == 0:
            break
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]


def group_by_length(order: list[int], lengths: Sequence[int], batch_size: int) -> list[int]:
    """Sort each mega-batch of the shuffled order longest first, so batches pad little."""
    size = batch_size * MEGABATCH_FACTOR
    grouped: list[int] = []
    for start in range(0, len(order), size):
        grouped.extend(sorted(order[start : start + size], key=lambda i: -lengths[i]))
    return grouped


def build_plan(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    seed: int,
    packing: bool,
    max_seq_length: int,
) -> BatchPlan:
    """Rows (packed or one example each) and their per-epoch order."""
    lengths = [len(example.input_ids) for example in examples]
    rows: list[Row] = (
        pack_rows(lengths, max_seq_length) if packing else [(i,) for i in range(len(lengths))]
    )
    row_lengths = [sum(lengths[i] for i in row) for row in rows]
    return BatchPlan(rows, row_lengths, batch_size, seed, group_by_length=True)


def collate(
    examples: Sequence[TokenizedExample], rows: Sequence[Row], pad_id: int, packing: bool
) -> Batch:
    """Pad rows to the longest; packed rows get restarting position_ids and no mask."""
    sequences = [[examples[i] for i in row] for row in rows]
    width = max(sum(len(e.input_ids) for e in row) for row in sequences)
    input_ids, labels, masks, positions = [], [], [], []
    for row in sequences:
        ids = [token for e in row for token in e.input_ids]
        # An example's first label would be predicted from the previous example: drop it.
        row_labels = [label for e in row for label in [IGNORE_INDEX, *e.labels[1:]]]
        pad = width - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        labels.append(row_labels + [IGNORE_INDEX] * pad)
        masks.append([1] * len(ids) + [0] * pad)
        # Padding of a packed row is its own segment (positions from 0), attending to itself.
        positions.append([p for e in row for p in range(len(e.input_ids))] + list(range(pad)))
    label_tensor = torch.tensor(labels)
    return Batch(
        input_ids=torch.tensor(input_ids),
        labels=label_tensor,
        attention_mask=None if packing else torch.tensor(masks),
        position_ids=torch.tensor(positions) if packing else None,
        tokens=sum(sum(mask) for mask in masks),
        trained_tokens=int((label_tensor[:, 1:] != IGNORE_INDEX).sum()),
    )


def collate_padding_free(examples: Sequence[TokenizedExample], rows: Sequence[Row]) -> Batch:
    """Every example of `rows` back to back in one row of shape (1, tokens), no padding.

    position_ids restart at 0 for each example and `sequence_starts` holds the cumulative
    lengths, so attention keeps the examples apart; each example's first label is dropped
    (it would be predicted from the previous example), as a padded row drops it by the shift.
    """
    sequence = [examples[i] for row in rows for i in row]
    ids = [token for example in sequence for token in example.input_ids]
    labels = [label for e in sequence for label in [IGNORE_INDEX, *e.labels[1:]]]
    positions = [p for example in sequence for p in range(len(example.input_ids))]
    lengths = [len(example.input_ids) for example in sequence]
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    label_tensor = torch.tensor([labels])
    return Batch(
        input_ids=torch.tensor([ids]),
        labels=label_tensor,
        attention_mask=None,
        position_ids=torch.tensor([positions]),
        tokens=len(ids),
        trained_tokens=int((label_tensor[:, 1:] != IGNORE_INDEX).sum()),
        sequence_starts=torch.tensor(starts, dtype=torch.int32),
        max_sequence_length=max(lengths),
    )
