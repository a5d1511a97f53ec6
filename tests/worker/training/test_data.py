"""Tokenization and label masking: the loss is taken only where the model should learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.datasets import Example, Message
from tests.worker.factories import chat_rows, write_jsonl
from worker.training.data import (
    IGNORE_INDEX,
    TokenizedExample,
    load_dataset,
    tokenize_dataset,
    tokenize_example,
)
from worker.training.errors import TrainingInputError


def chat(*messages: tuple[str, str] | tuple[str, str, int]) -> Example:
    return Example(format="chat", messages=tuple(Message(*m) for m in messages))  # type: ignore[arg-type]


def split_by_label(tokenizer: Any, tokenized: TokenizedExample) -> tuple[str, str]:
    """(decoded labelled tokens, decoded unlabelled tokens)."""
    pairs = list(zip(tokenized.input_ids, tokenized.labels, strict=True))
    trained = [token for token, label in pairs if label != IGNORE_INDEX]
    ignored = [token for token, label in pairs if label == IGNORE_INDEX]
    return tokenizer.decode(trained), tokenizer.decode(ignored)


def test_chat_labels_cover_only_the_assistant_turn_token_by_token(tokenizer: Any) -> None:
    example = chat(
        ("system", "You answer briefly."),
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
    )
    tokenized = tokenize_example(tokenizer, example, "assistant")
    rendered = [
        (tokenizer.convert_ids_to_tokens(token), label != IGNORE_INDEX)
        for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
    ]
    first_trained = next(i for i, (_, trained) in enumerate(rendered) if trained)
    # Everything up to and including the assistant header is context, everything after is
    # the reply and its end-of-turn EOS.
    assert [token for token, _ in rendered[first_trained - 2 : first_trained]] == [
        "<|assistant|>",
        "Ċ",
    ]
    assert all(not trained for _, trained in rendered[:first_trained])
    assert all(trained for _, trained in rendered[first_trained:])
    assert rendered[-1] == ("</s>", True)
    trained_text, context = split_by_label(tokenizer, tokenized)
    assert trained_text == "The capital of France is Paris.</s>"
    assert context.startswith("<s><|system|>\nYou answer briefly.</s><|user|>")
    assert tokenized.labels == [
        token if trained else IGNORE_INDEX
        for token, (_, trained) in zip(tokenized.input_ids, rendered, strict=True)
    ]


def test_chat_mask_agrees_with_the_templates_generation_mask(tokenizer: Any) -> None:
    messages = [
        ("user", "Hi there."),
        ("assistant", "Hello!"),
        ("user", "Bye."),
        ("assistant", "Bye!"),
    ]
    tokenized = tokenize_example(tokenizer, chat(*messages), "assistant")
    reference = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert tokenized.input_ids == list(reference["input_ids"])
    ours = [int(label != IGNORE_INDEX) for label in tokenized.labels]
    assert ours == list(reference["assistant_masks"])


def test_weight_zero_assistant_message_carries_no_labels(tokenizer: Any) -> None:
    example = chat(
        ("user", "Tell me a fact."),
        ("assistant", "The sky is green.", 0),
        ("user", "That is wrong."),
        ("assistant", "The sky is blue."),
    )
    trained_text, context = split_by_label(
        tokenizer, tokenize_example(tokenizer, example, "assistant")
    )
    assert trained_text == "The sky is blue.</s>"
    assert "The sky is green." in context


def test_prompt_completion_masks_the_prompt(tokenizer: Any) -> None:
    example = Example(format="prompt_completion", prompt="Two plus three is", completion=" five.")
    tokenized = tokenize_example(tokenizer, example, "assistant")
    trained_text, context = split_by_label(tokenizer, tokenized)
    assert trained_text == " five.</s>"
    assert context == "<s>Two plus three is"
    assert tokenized.input_ids[-1] == tokenizer.eos_token_id


def test_train_on_all_labels_every_token(tokenizer: Any) -> None:
    for example in (
        chat(("user", "Hi."), ("assistant", "Hello.")),
        Example(format="prompt_completion", prompt="Hi.", completion=" Hello."),
    ):
        tokenized = tokenize_example(tokenizer, example, "all")
        assert tokenized.labels == tokenized.input_ids


def test_text_is_learned_whole_and_ends_with_eos(tokenizer: Any) -> None:
    tokenized = tokenize_example(tokenizer, Example(format="text", text="Rain later."), "assistant")
    assert tokenized.labels == tokenized.input_ids
    assert tokenizer.decode(tokenized.input_ids) == "<s>Rain later.</s>"


def test_truncation_is_counted_and_examples_without_trained_tokens_are_dropped(
    tokenizer: Any,
) -> None:
    short = chat(("user", "Hi."), ("assistant", "Hello."))
    long_reply = chat(("user", "Hi."), ("assistant", "word " * 40))
    long_prompt = chat(("user", "word " * 40), ("assistant", "Hello."))
    data = tokenize_dataset(
        tokenizer, [short, long_reply, long_prompt], max_seq_length=24, train_on="assistant"
    )
    assert (data.truncated, data.dropped, len(data.examples)) == (2, 1, 2)
    assert all(len(e.input_ids) <= 24 for e in data.examples)
    assert data.examples[1].trained_tokens > 0


def test_max_seq_length_below_every_prompt_is_a_typed_error(tokenizer: Any) -> None:
    examples = [chat(("user", "word " * 30), ("assistant", "Hello.")) for _ in range(3)]
    with pytest.raises(TrainingInputError) as caught:
        tokenize_dataset(tokenizer, examples, max_seq_length=16, train_on="assistant")
    error = caught.value
    assert error.code == "max_seq_length_below_prompt"
    assert error.param == "training.max_seq_length"
    prompt_tokens = tokenize_example(tokenizer, examples[0], "assistant").prompt_length
    assert f"shortest prompt is {prompt_tokens} tokens" in error.message
    assert "raise training.max_seq_length" in error.message


def test_validation_file_empty_after_truncation_is_a_typed_error(
    tokenizer: Any, tmp_path: Path
) -> None:
    rows = [{"prompt": "word " * 30, "completion": " yes"}] * 2
    path = write_jsonl(tmp_path / "validation.jsonl", rows)
    with pytest.raises(TrainingInputError) as caught:
        load_dataset(
            path, tokenizer, max_seq_length=16, train_on="assistant", param="validation_file"
        )
    assert caught.value.code == "empty_dataset_after_truncation"
    assert caught.value.param == "validation_file"


def test_invalid_or_missing_training_file_is_a_typed_error(tokenizer: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no reply"}]}\n')
    for path, code in ((bad, "invalid_file"), (tmp_path / "missing.jsonl", "file_not_found")):
        with pytest.raises(TrainingInputError) as caught:
            load_dataset(path, tokenizer, max_seq_length=64, train_on="assistant")
        assert (caught.value.code, caught.value.param) == (code, "training_file")


def test_dataset_file_round_trip(tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_rows(repeat=2))
    data = load_dataset(path, tokenizer, max_seq_length=64, train_on="assistant")
    assert len(data.examples) == 8
    assert (data.truncated, data.dropped) == (0, 0)
