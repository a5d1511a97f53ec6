"""Tool calls, ShareGPT, Alpaca and content as text parts through the tiny model's template,
label by label: the assistant's words and tool calls are learned, tool results and questions
are not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.datasets import Example, Message, parse_example
from worker.training.data import IGNORE_INDEX, TokenizedExample, render_chat, tokenize_example
from worker.training.errors import TrainingInputError

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_LINE = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "assistant", "content": "Sunny and 21 C."},
    ],
    "tools": [WEATHER_TOOL],
}
SHAREGPT_LINE = {
    "system": "Be brief.",
    "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {
            "from": "function_call",
            "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
        },
        {"from": "observation", "value": "snow"},
        {"from": "gpt", "value": "It snows."},
    ],
    "tools": json.dumps([WEATHER_TOOL["function"]]),
}
ALPACA_LINE = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}


def parsed(line: dict[str, Any]) -> Example:
    example = parse_example(line, 1)
    assert isinstance(example, Example), example
    return example


def labelled_runs(tokenizer: Any, tokenized: TokenizedExample) -> list[tuple[bool, str]]:
    """The token sequence as alternating (trained, decoded text) runs."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        trained = label != IGNORE_INDEX
        assert label in (IGNORE_INDEX, token)
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return [(trained, tokenizer.decode(tokens)) for trained, tokens in runs]


def assert_matches_generation_mask(tokenizer: Any, example: Example, tokenized: TokenizedExample):
    """Every token's label agrees with the template's own {% generation %} mask."""
    reference = tokenizer.apply_chat_template(
        [m.to_template() for m in example.messages],
        tools=list(example.tools) or None,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert tokenized.input_ids == list(reference["input_ids"])
    ours = [int(label != IGNORE_INDEX) for label in tokenized.labels]
    assert ours == list(reference["assistant_masks"])


def test_tool_calls_are_trained_and_tool_results_are_not(tokenizer: Any) -> None:
    example = parsed(TOOL_LINE)
    tokenized = tokenize_example(tokenizer, example, "assistant")
    schema = json.dumps(WEATHER_TOOL["function"])
    assert labelled_runs(tokenizer, tokenized) == [
        (
            False,
            f"<s><|system|>\nYou may call these functions:\n{schema}\n</s>"
            "<|user|>\nWeather in Paris?</s><|assistant|>\n",
        ),
        (
            True,
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call></s>',
        ),
        (False, "<|tool|>\nsunny, 21 C</s><|assistant|>\n"),
        (True, "Sunny and 21 C.</s>"),
    ]
    assert_matches_generation_mask(tokenizer, example, tokenized)


def test_sharegpt_with_a_function_call_renders_as_chat_with_tools(tokenizer: Any) -> None:
    example = parsed(SHAREGPT_LINE)
    assert example.source == "sharegpt" and example.tools == (WEATHER_TOOL,)
    tokenized = tokenize_example(tokenizer, example, "assistant")
    runs = labelled_runs(tokenizer, tokenized)
    assert [text for trained, text in runs if trained] == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call></s>',
        "It snows.</s>",
    ]
    assert runs[0][1].endswith(
        "<|system|>\nBe brief.</s><|user|>\nWeather in Oslo?</s><|assistant|>\n"
    )
    assert runs[2] == (False, "<|tool|>\nsnow</s><|assistant|>\n")
    assert_matches_generation_mask(tokenizer, example, tokenized)


def test_alpaca_learns_the_output_only(tokenizer: Any) -> None:
    example = parsed(ALPACA_LINE)
    assert example.source == "alpaca"
    tokenized = tokenize_example(tokenizer, example, "assistant")
    assert labelled_runs(tokenizer, tokenized) == [
        (False, "<s><|user|>\nAdd the numbers.\n2 and 3</s><|assistant|>\n"),
        (True, "5</s>"),
    ]
    assert_matches_generation_mask(tokenizer, example, tokenized)


def test_content_as_text_parts_tokenizes_as_its_joined_string(tokenizer: Any) -> None:
    def parts(*texts: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": text} for text in texts]

    in_parts = {
        **TOOL_LINE,
        "messages": [
            {"role": "user", "content": parts("Weather ", "in Paris?")},
            TOOL_LINE["messages"][1],
            {"role": "tool", "tool_call_id": "call_1", "content": parts("sunny, ", "21 C")},
            {"role": "assistant", "content": parts("Sunny ", "and ", "21 C.")},
        ],
    }
    plain = tokenize_example(tokenizer, parsed(TOOL_LINE), "assistant")
    tokenized = tokenize_example(tokenizer, parsed(in_parts), "assistant")
    assert (tokenized.input_ids, tokenized.labels) == (plain.input_ids, plain.labels)
    assert any(label != IGNORE_INDEX for label in tokenized.labels)


def test_a_template_without_tools_is_a_user_error_not_a_crash(tokenizer: Any) -> None:
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = (
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    )
    with pytest.raises(TrainingInputError) as raised:
        tokenize_example(plain, parsed(TOOL_LINE), "assistant")
    assert raised.value.code == "chat_template_no_tools"


def test_a_conversation_without_tools_renders_as_before(tokenizer: Any) -> None:
    messages = (Message("user", "Hi"), Message("assistant", "Hello"))
    assert render_chat(tokenizer, messages) == ("<s><|user|>\nHi</s><|assistant|>\nHello</s>")
