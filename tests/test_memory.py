"""app.memory for DPO: a pair runs two sequences through the policy, so twice the activations."""

from __future__ import annotations

from app.memory import TINY_RANDOM_LLAMA_SHAPE, estimate_memory
from app.schemas.spec import (
    Hyperparameters,
    LoraSpec,
    MethodType,
    QuantizationSpec,
    ResolvedSpec,
    TrainingSpec,
    resolve_spec,
)


def spec(method: MethodType, batch_size: int) -> ResolvedSpec:
    return resolve_spec(
        model="loraforge/tiny-random-llama",
        seed=0,
        n_train_examples=100,
        hyperparameters=Hyperparameters(batch_size=batch_size),
        lora=LoraSpec(),
        quantization=QuantizationSpec(),
        training=TrainingSpec(max_seq_length=512),
        method=method,
    )


def test_a_dpo_pair_counts_the_activations_of_two_sequences() -> None:
    pairs = estimate_memory(spec("dpo", batch_size=4), TINY_RANDOM_LLAMA_SHAPE)
    examples = estimate_memory(spec("supervised", batch_size=4), TINY_RANDOM_LLAMA_SHAPE)
    twice_the_examples = estimate_memory(spec("supervised", batch_size=8), TINY_RANDOM_LLAMA_SHAPE)
    assert pairs.activations == twice_the_examples.activations == 2 * examples.activations
    # The weights, the adapter and its optimizer state do not depend on the method.
    assert pairs.total - pairs.activations == examples.total - examples.activations
