"""DPO: the loss and gradients against TRL's DPOTrainer, the pairs' tokens, and the reference
taken from the same model with its adapter disabled."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from app.datasets import Example, Message, read_examples
from tests.worker.factories import FACTS, WRONG, build_config, preference_rows, write_jsonl
from tests.worker.training.test_engine import StopAfter
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
from worker.training.engine import run_training
from worker.training.metrics import StepMetrics, TrainingHooks, read_results
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
        trained = [
            t
            for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
            if label != -100
        ]
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
        tokenizer,
        [pair_example(q, a, w) for (q, a), w in zip(FACTS, WRONG, strict=True)],
        max_seq_length=64,
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


# --- whole runs -------------------------------------------------------------------------


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", preference_rows(repeat=4))


@pytest.fixture
def pairs_validation(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs-valid.jsonl", preference_rows(repeat=1))


def dpo_config(**training: Any) -> Any:
    values = {"learning_rate": 5e-3, "max_steps": 12, "eval_every_steps": 4, **training}
    return build_config(method="dpo", beta=0.5, **values)


def test_a_dpo_run_learns_the_preference_and_reports_it(
    make_paths: Any, pairs_file: Path, pairs_validation: Path
) -> None:
    paths = make_paths(train_file=pairs_file, validation_file=pairs_validation)
    seen: list[StepMetrics] = []
    result = run_training(dpo_config(), paths, TrainingHooks(on_metrics=seen.append))
    assert (result.status, result.global_step) == ("completed", 12)
    first, last = seen[0], seen[-1]
    # Step 1 is taken at the reference itself: no margin, the loss is log 2.
    assert first.train_loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.train_reward_margin == pytest.approx(0.0, abs=1e-5)
    assert last.train_loss < 0.5 * math.log(2)
    assert last.train_reward_margin is not None and last.train_reward_margin > 1.0
    evaluated = [m for m in seen if m.valid_preference_accuracy is not None]
    assert [m.step for m in evaluated] == [4, 8, 12]
    assert evaluated[-1].valid_preference_accuracy == 1.0
    assert evaluated[-1].valid_reward_margin > evaluated[0].valid_reward_margin > 0  # type: ignore[operator]
    assert last.full_valid_preference_accuracy == 1.0
    # The reward means are what the margin is the difference of.
    assert last.train_rewards_chosen - last.train_rewards_rejected == pytest.approx(  # type: ignore[operator]
        last.train_reward_margin
    )
    rows = read_results(paths.results_csv)
    assert rows[-1]["train_preference_accuracy"] and rows[-1]["valid_reward_margin"]
    provenance = json.loads((paths.adapter_dir / "provenance.json").read_text())
    assert provenance["resolved_spec"]["method"] == "dpo"
    assert provenance["resolved_spec"]["hyperparameters"]["beta"] == 0.5


def test_a_resumed_dpo_run_continues_exactly(
    make_paths: Any, pairs_file: Path, pairs_validation: Path
) -> None:
    config = dpo_config(max_steps=8, checkpoint_every_steps=3, gradient_accumulation_steps=2)
    straight = run_training(
        config, make_paths("straight", train_file=pairs_file, validation_file=pairs_validation)
    )
    paths = make_paths("resumed", train_file=pairs_file, validation_file=pairs_validation)
    stopper = StopAfter(5)
    stopped = run_training(config, paths, stopper.hooks())
    assert (stopped.status, stopped.global_step) == ("stopped", 5)
    saved = json.loads((paths.checkpoints_dir / "step-5" / "trainer_state.json").read_text())
    assert len(saved["reference"]["train"]) == 2 * len(preference_rows(repeat=4))
    resumed = run_training(config, paths)
    assert resumed.resumed_from_step == 5
    columns = ["train_loss", "train_reward_margin", "valid_preference_accuracy", "lr"]
    for column in columns:
        expected = [r[column] for r in read_results(straight.results_csv)]
        got = [r[column] for r in read_results(resumed.results_csv)]
        assert [float(v) if v else None for v in got] == pytest.approx(
            [float(v) if v else None for v in expected], abs=1e-5
        ), column


def test_dpo_on_a_parent_takes_the_parent_as_its_reference(
    make_paths: Any, pairs_file: Path, tmp_path: Path
) -> None:
    """Supervised, then DPO from its adapter: step 1 of the DPO run is at its reference (the
    parent, not the bare base), so its loss is exactly log 2 though the parent has moved."""
    supervised = run_training(build_config(max_steps=6), make_paths("sft"))
    assert supervised.adapter_dir is not None
    parent = supervised.adapter_dir / "adapter_model.safetensors"
    paths = replace(make_paths("dpo", train_file=pairs_file), parent_adapter=parent)
    seen: list[StepMetrics] = []
    run_training(dpo_config(max_steps=2), paths, TrainingHooks(on_metrics=seen.append))
    assert seen[0].train_loss == pytest.approx(math.log(2), abs=1e-5)
    # Against the bare base the parent's answers already differ: the reference matters.
    loaded = load_model(dpo_config(), paths.models_dir, parent_adapter=parent)
    examples = tokenize_pairs(
        loaded.tokenizer, read_examples(pairs_file), max_seq_length=64
    ).examples
    base = reference_logps(loaded.model, examples, 4, "cpu", parent=False)
    moved = reference_logps(loaded.model, examples, 4, "cpu", parent=True)
    assert float((base - moved).abs().max()) > 1e-2
