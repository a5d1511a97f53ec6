"""DPO: the loss and gradients against TRL's DPOTrainer, the pairs' tokens, and the reference
taken from the same model with its adapter disabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from app.datasets import Example, Message
from tests.worker.factories import FACTS, WRONG, build_config
from worker.training.batching import collate_padding_free
from worker.training.data import IGNORE_INDEX, TokenizedExample
from worker.training.dpo import (
    batch_dpo,
    disable_dropout,
    pair_rows,
    reference_logps,
    tokenize_pair,
    tokenize_pairs,
)
from worker.training.models import load_model

pytestmark = pytest.mark.slow

BETA = 0.3


def pair_example(question: str, answer: str, wrong: str) -> Example:
    return Example(
        format="preference",
        messages=(
            Message(role="system", content="You answer briefly."),
            Message(role="user", content=question),
        ),
        preferred=Message(role="assistant", content=answer),
        non_preferred=Message(role="assistant", content=wrong),
    )


def lora_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def perturbed_model(models_dir: Path) -> Any:
    """The tiny model in 4-bit with LoRA, its adapter moved off zero so that the policy and
    the reference differ (a fresh adapter equals its reference: every margin would be 0)."""
    config = build_config(method="dpo", beta=BETA, gradient_checkpointing=False)
    loaded = load_model(config, models_dir)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in lora_parameters(loaded.model).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    disable_dropout(loaded.model)
    return loaded


def trl_trainer(model: Any, tokenizer: Any, tmp_path: Path) -> Any:
    """TRL's DPOTrainer (sigmoid loss) on the four facts as one batch. Given a PEFT model, it
    copies the adapter as it is into a "ref" adapter: the reference is the model as training
    starts, as ours is."""
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": question},
            ],
            "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": wrong}],
        }
        for (question, answer), wrong in zip(FACTS, WRONG, strict=True)
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        loss_type=["sigmoid"],
        per_device_train_batch_size=len(rows),
        report_to=[],
        use_cpu=True,
        bf16=False,  # fp32 as our CPU runs: TRL would otherwise cast the adapter to bf16
        max_length=None,
        save_strategy="no",
        logging_strategy="no",
    )
    return DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def examples_from_trl_batch(inputs: dict[str, torch.Tensor]) -> list[TokenizedExample]:
    """TRL's [chosen..., rejected...] padded rows as our interleaved (chosen, rejected) pairs,
    labels on the completion tokens: the very tokens TRL scored."""
    ids, mask, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
    sequences = []
    for row in range(ids.shape[0]):
        keep = mask[row].bool()
        tokens = ids[row][keep].tolist()
        labelled = completion[row][keep].bool().tolist()
        labels = [t if on else IGNORE_INDEX for t, on in zip(tokens, labelled, strict=True)]
        sequences.append(TokenizedExample(tokens, labels))
    pairs = len(sequences) // 2
    return [seq for p in range(pairs) for seq in (sequences[p], sequences[pairs + p])]


def test_dpo_loss_and_gradients_equal_trl(models_dir: Path, tmp_path: Path) -> None:
    loaded = perturbed_model(models_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    trainer = trl_trainer(model, tokenizer, tmp_path)
    inputs = next(iter(trainer.get_train_dataloader()))
    examples = examples_from_trl_batch(inputs)
    # Our reference from the same adapter TRL's "ref" copy holds (the model as it started).
    model.set_adapter("ref")
    reference = reference_logps(model, examples, 4, "cpu", parent=True)
    model.set_adapter("default")
    # Then the policy moves away from it, as training would have moved it. (TRL casts a
    # 4-bit model's trainable adapter to bf16; back to fp32, as our CPU runs train it.)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in lora_parameters(model).values():
            parameter.data = parameter.data.float()
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.train()
    expected = trainer.compute_loss(model, inputs)
    expected.backward()
    expected_grads = {name: p.grad.clone() for name, p in lora_parameters(model).items()}
    model.zero_grad(set_to_none=True)

    rows = pair_rows(examples)
    output = batch_dpo(
        model.get_base_model(), collate_padding_free(examples, rows), reference, BETA, "cpu"
    )
    (output.loss / len(rows)).backward()
    ours = {name: p.grad for name, p in lora_parameters(model).items()}
    assert float(output.loss) / len(rows) == pytest.approx(float(expected), abs=1e-4)
    # The policy differs from its reference: the loss is not log 2, the margins not 0.
    assert abs(float(expected) - 0.6931) > 1e-2
    assert ours.keys() == expected_grads.keys()
    worst = max(float((ours[n] - expected_grads[n]).abs().max()) for n in ours)
    scale = max(float(g.abs().max()) for g in expected_grads.values())
    assert scale > 1e-3 and worst < 1e-4, (worst, scale)


def test_a_pair_trains_only_its_answer(tokenizer: Any) -> None:
    example = pair_example("What is two plus three?", "Five.", "Nine.")
    example.messages = (
        *example.messages,
        Message(role="assistant", content="Let me think."),
        Message(role="user", content="Well?"),
    )
    chosen, rejected = tokenize_pair(tokenizer, example)
    for tokenized, answer in ((chosen, "Five."), (rejected, "Nine.")):
        trained = [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != -100]
        text = tokenizer.decode(trained)
        # The answer and its end of turn; never the input's earlier assistant turn.
        assert text.startswith(answer) and "think" not in text
        assert tokenized.labels[-1] == tokenizer.eos_token_id
    # The two share the input: identical up to the answers.
    prefix = chosen.prompt_length
    assert prefix == rejected.prompt_length > 0
    assert chosen.input_ids[:prefix] == rejected.input_ids[:prefix]


def test_pairs_are_interleaved_and_a_pair_without_room_is_dropped(tokenizer: Any) -> None:
    short = pair_example("Hi?", "Hello.", "Bye.")
    long = pair_example("Tell me " * 60, "Sure.", "No.")
    data = tokenize_pairs(tokenizer, [short, long, short], max_seq_length=64)
    assert (len(data.examples), data.dropped, data.truncated) == (4, 1, 1)
    assert data.examples[0] == data.examples[2] and data.examples[1] == data.examples[3]
    assert data.examples[0] != data.examples[1]


def test_the_reference_is_the_model_with_its_adapter_disabled(models_dir: Path) -> None:
    loaded = perturbed_model(models_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    examples = tokenize_pairs(
        tokenizer, [pair_example(q, a, w) for (q, a), w in zip(FACTS, WRONG)], max_seq_length=64
    ).examples
    reference = reference_logps(model, examples, 2, "cpu", parent=False)
    parent = reference_logps(model, examples, 2, "cpu", parent=True)
    # Unbatched, one sequence at a time with peft's adapter switched off, as a check.
    with torch.no_grad(), model.disable_adapter():
        for index, example in enumerate(examples):
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(example.labels[1:])
            picked = logits.log_softmax(-1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
            expected = float(picked[labels != -100].sum())
            assert float(reference[index]) == pytest.approx(expected, abs=1e-4)
    # With the adapter on (a parent's), the numbers differ: the adapter was moved off zero.
    assert float((reference - parent).abs().max()) > 1e-3
