"""Choosing tokens and cutting text at stop sequences, without a model."""

from __future__ import annotations

import torch

from worker.inference.sampling import SamplingParams, TextTracker, new_generator, next_token


def test_temperature_zero_is_the_argmax_and_a_tiny_top_p_keeps_the_likeliest_token():
    logits = torch.randn(512, generator=torch.Generator().manual_seed(0))
    likeliest = int(logits.argmax())
    assert next_token(logits, SamplingParams(4, temperature=0), new_generator(1)) == likeliest
    for top_p in (1e-9, 2.2250738585072014e-308):  # the second is below float32's range
        params = SamplingParams(4, temperature=0.8, top_p=top_p)
        assert next_token(logits, params, new_generator(1)) == likeliest


def test_a_tiny_temperature_draws_the_likeliest_token():
    """1.4e-45 is above 0, so the API takes it; dividing logits by it overflowed to inf and
    the softmax to NaN (a 500 the fuzzer found)."""
    logits = torch.randn(512, generator=torch.Generator().manual_seed(2)) * 10
    for temperature in (1.401298464324817e-45, 1e-30):
        params = SamplingParams(4, temperature=temperature)
        assert next_token(logits, params, new_generator(1)) == int(logits.argmax())


def test_a_seed_repeats_its_draws():
    logits = torch.randn(512, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(4, temperature=1.5)

    def draws(seed: int) -> list[int]:
        generator = new_generator(seed)
        return [next_token(logits, params, generator) for _ in range(20)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_text_that_may_start_a_stop_sequence_waits_and_the_stop_ends_the_text():
    tracker = TextTracker(stop=("END",))
    assert tracker.advance("Hello E") == "Hello "  # "E" may start "END"
    assert tracker.advance("Hello EN") == ""
    assert tracker.advance("Hello ENx") == "ENx"  # it did not
    assert not tracker.stopped
    assert tracker.advance("Hello ENx and END more") == " and "
    assert tracker.stopped and tracker.sent == "Hello ENx and "


def test_half_a_character_waits_for_the_rest():
    tracker = TextTracker(stop=())
    assert tracker.advance("caf\ufffd") == "caf"
    assert tracker.advance("café") == "é"
    assert tracker.flush("café!") == "!"
