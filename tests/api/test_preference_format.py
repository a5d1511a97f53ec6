"""Uploads of OpenAI's preference (DPO) pairs: a good file is format "preference"; every way a
pair can be wrong has its own code, 1-based line and field; unknown keys refused at every level."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.datasets import parse_example
from tests.conftest import upload
from tests.factories import Tenant, chat_line, jsonl, preference_dataset, preference_line

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def pair(**changes: Any) -> dict[str, Any]:
    return preference_line("Weather in Paris?", "Sunny.", "Look outside.") | changes


def with_input(**changes: Any) -> dict[str, Any]:
    line = pair()
    return line | {"input": line["input"] | changes}


def tool_pair() -> dict[str, Any]:
    """A pair whose input ends with a tool result, and whose preferred output calls a tool."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    return pair(input={"messages": messages, "tools": [TOOL], "parallel_tool_calls": False})


def test_a_preference_file_is_accepted_as_its_own_format(client: TestClient, tenant_a: Tenant):
    response = upload(client, tenant_a, preference_dataset(12))
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    assert stats["format"] == "preference"
    assert stats["examples"] == 12
    assert stats["converted_from"] is None
    assert stats["tool_examples"] == 0


def test_pairs_with_tools_are_counted_as_tool_examples(client: TestClient, tenant_a: Tenant):
    answer_with_call = pair(
        preferred_output=[{"role": "assistant", "content": None, "tool_calls": [CALL]}]
    )
    response = upload(client, tenant_a, jsonl(tool_pair(), answer_with_call, *[pair()] * 10))
    assert response.status_code == 200, response.text
    assert response.json()["stats"]["tool_examples"] == 2


def test_content_as_text_parts_is_the_pair_its_joined_strings_make():
    def parts(*texts: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": text} for text in texts]

    in_parts = pair(
        input={"messages": [{"role": "user", "content": parts("Weather ", "in Paris?")}]},
        preferred_output=[{"role": "assistant", "content": parts("Sunny.")}],
        non_preferred_output=[{"role": "assistant", "content": parts("Look ", "outside.")}],
    )
    assert parse_example(in_parts, 1) == parse_example(pair(), 1)


ASSISTANT = {"role": "assistant", "content": "Sunny."}
BAD_PAIRS: list[tuple[str, dict[str, Any], str]] = [
    ("missing_input", {k: v for k, v in pair().items() if k != "input"}, "input"),
    ("invalid_input", pair(input=[{"role": "user", "content": "x"}]), "input"),
    (
        "missing_preferred_output",
        {k: v for k, v in pair().items() if k != "preferred_output"},
        "preferred_output",
    ),
    (
        "missing_non_preferred_output",
        {k: v for k, v in pair().items() if k != "non_preferred_output"},
        "non_preferred_output",
    ),
    ("invalid_output", pair(preferred_output=[ASSISTANT, ASSISTANT]), "preferred_output"),
    ("invalid_output", pair(non_preferred_output=ASSISTANT), "non_preferred_output"),
    (
        "invalid_output",
        pair(preferred_output=[{"role": "user", "content": "x"}]),
        "preferred_output[0].role",
    ),
    (
        "missing_content",
        pair(non_preferred_output=[{"role": "assistant", "content": ""}]),
        "non_preferred_output[0].content",
    ),
    (
        "invalid_weight",
        pair(preferred_output=[ASSISTANT | {"weight": 1}]),
        "preferred_output[0].weight",
    ),
    (
        "input_ends_with_assistant",
        with_input(messages=[{"role": "user", "content": "Hi"}, ASSISTANT]),
        "input.messages[1]",
    ),
    (
        "input_ends_with_system",
        with_input(messages=[{"role": "system", "content": "Be brief."}]),
        "input.messages[0]",
    ),
    ("missing_messages_list", with_input(messages=[]), "input.messages"),
    ("unrecognized_key", pair(id=3), "id"),
    ("unrecognized_key", with_input(functions=[TOOL["function"]]), "input.functions"),
    ("unrecognized_key", with_input(tools=[TOOL | {"x": 1}]), "input.tools[0].x"),
    (
        "message_unrecognized_key",
        with_input(messages=[{"role": "user", "content": "Hi", "x": 1}]),
        "input.messages[0].x",
    ),
    (
        "message_unrecognized_key",
        pair(preferred_output=[ASSISTANT | {"refusal": None}]),
        "preferred_output[0].refusal",
    ),
    ("invalid_tools", with_input(tools={"get_weather": {}}), "input.tools"),
    (
        "unsupported_content_part",
        with_input(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        "input.messages[0].content[0].type",
    ),
    (
        "invalid_content_part",
        pair(preferred_output=[{"role": "assistant", "content": [{"type": "text", "text": None}]}]),
        "preferred_output[0].content[0].text",
    ),
    (
        "missing_content",
        pair(non_preferred_output=[{"role": "assistant", "content": []}]),
        "non_preferred_output[0].content",
    ),
    (
        "unknown_tool_call_id",
        pair(
            input={
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "tool", "tool_call_id": "c9", "content": "sunny"},
                ]
            }
        ),
        "input.messages[1].tool_call_id",
    ),
    (
        "too_many_tool_calls",
        tool_pair()
        | {
            "preferred_output": [
                {"role": "assistant", "tool_calls": [CALL, CALL | {"id": "c2"}]},
            ]
        },
        "preferred_output[0].tool_calls",
    ),
]


@pytest.mark.parametrize(
    ("code", "line", "field"), BAD_PAIRS, ids=[f"{case[0]}-{case[2]}" for case in BAD_PAIRS]
)
def test_a_bad_pair_names_its_line_field_and_code(
    client: TestClient, tenant_a: Tenant, code: str, line: dict[str, Any], field: str
):
    response = upload(client, tenant_a, jsonl(pair(), line))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    first = error["problems"][0]
    assert (first["line"], first["field"], first["code"]) == (2, field, code)


def test_a_file_mixing_pairs_and_chat_is_refused(client: TestClient, tenant_a: Tenant):
    response = upload(client, tenant_a, jsonl(pair(), chat_line("q", "a")))
    first = response.json()["error"]["problems"][0]
    assert (first["line"], first["code"]) == (2, "mixed_formats")
    assert "chat but the file started as preference" in first["message"]


def test_a_misspelt_pair_is_pointed_at_the_preference_format(client: TestClient, tenant_a: Tenant):
    line = {"prompt_input": {}, "preffered_output": [], "non_preferred_outputs": []}
    problem = upload(client, tenant_a, jsonl(line)).json()["error"]["problems"][0]
    assert problem["code"] == "unrecognized_format"
    assert "nearest known format is preference" in problem["message"]
