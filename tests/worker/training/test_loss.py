"""Chunked cross-entropy: the plain full-logits loss and gradients, chunk by chunk."""

from __future__ import annotations

import pytest
import torch

from worker.training.data import IGNORE_INDEX
from worker.training.loss import chunked_cross_entropy, full_logits_cross_entropy


def inputs(tokens: int = 53, hidden: int = 24, vocab: int = 97) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(tokens, hidden, generator=generator)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::5] = IGNORE_INDEX
    labels[:9] = IGNORE_INDEX  # a whole chunk without labels is skipped
    return states, labels


@pytest.mark.parametrize("trainable_head", [False, True], ids=["frozen_head", "trained_head"])
def test_chunked_cross_entropy_equals_the_full_logits_loss(trainable_head: bool) -> None:
    states, labels = inputs()
    torch.manual_seed(1)
    head = torch.nn.Linear(24, 97, bias=False)
    head.weight.requires_grad_(trainable_head)

    def run(compute: object, chunk: int | None = None) -> tuple[torch.Tensor, ...]:
        hidden = states.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        args = (head, hidden * 1.5, labels)  # a graph before the loss, as a model has
        output = compute(*args, chunk=chunk) if chunk else compute(*args)  # type: ignore[operator]
        output.loss.backward()
        weight_grad = head.weight.grad if trainable_head else torch.zeros(())
        return output.loss.detach(), hidden.grad, weight_grad, output.correct, output.counted

    expected = run(full_logits_cross_entropy)
    for chunk in (1, 8, 16, 1000):
        loss, grad, weight_grad, correct, counted = run(chunked_cross_entropy, chunk)
        torch.testing.assert_close(loss, expected[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad, expected[1], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(weight_grad, expected[2], atol=1e-6, rtol=1e-6)
        assert (correct, counted) == (expected[3], expected[4])


def test_chunked_cross_entropy_without_grad_only_measures() -> None:
    states, labels = inputs()
    head = torch.nn.Linear(24, 97, bias=False).requires_grad_(False)
    with torch.no_grad():
        output = chunked_cross_entropy(head, states, labels, chunk=10)
        expected = full_logits_cross_entropy(head, states, labels)
    torch.testing.assert_close(output.loss, expected.loss, atol=1e-6, rtol=1e-6)
    assert not output.loss.requires_grad
