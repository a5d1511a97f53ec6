"""Uploads in the formats people bring: OpenAI chat with tools or with content as text parts,
ShareGPT, Alpaca; unknown keys refused at every level; a JSON array answered once; every new
problem code with a bad file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.datasets import parse_example
from tests.conftest import RecordingEnqueuer, create_job, upload
from tests.factories import Tenant, chat_line, jsonl

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def call(call_id: str = "c1", arguments: Any = '{"city": "Paris"}') -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def tool_line(**changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call()]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": [TOOL],
        "parallel_tool_calls": True,
    }
    line.update(changes)
    return line


def with_message(index: int, **changes: Any) -> dict[str, Any]:
    line = tool_line()
    line["messages"][index] = {**line["messages"][index], **changes}
    return line


def text_parts(*texts: str) -> list[dict[str, str]]:
    """Content as OpenAI's list of text parts."""
    return [{"type": "text", "text": text} for text in texts]


# tool_line() with every content as text parts: split in two, one part, or none (the call).
PARTS = {
    **tool_line(),
    "messages": [
        {"role": "user", "content": text_parts("Weather ", "in Paris?")},
        {"role": "assistant", "content": [], "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "c1", "content": text_parts("sunny")},
        {"role": "assistant", "content": text_parts("Sun", "ny.")},
    ],
}
ALPACA = {"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "Be exact."}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {}}'},
        {"from": "observation", "value": "rain"},
        {"from": "gpt", "value": "It rains."},
    ],
    "tools": json.dumps([TOOL["function"]]),
}
LEGACY = {
    "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
    "functions": [TOOL["function"]],
}


@pytest.mark.parametrize(
    ("line", "converted_from", "tool_examples"),
    [
        (tool_line(), None, 12),
        (PARTS, None, 12),
        (with_message(1, tool_calls=[call(arguments={"city": "Paris"})]), None, 12),
        (LEGACY, None, 12),
        (ALPACA, "alpaca", 0),
        (SHAREGPT, "sharegpt", 12),
    ],
    ids=["tools", "text-parts", "object-arguments", "legacy-functions", "alpaca", "sharegpt"],
)
def test_formats_people_bring_are_accepted_and_keep_their_bytes(
    client: TestClient,
    tenant_a: Tenant,
    line: dict[str, Any],
    converted_from: str | None,
    tool_examples: int,
):
    content = jsonl(*[line] * 12)
    response = upload(client, tenant_a, content)
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    assert stats["format"] == "chat"
    assert stats["examples"] == 12
    assert stats["converted_from"] == converted_from
    assert stats["tool_examples"] == tool_examples
    file_id = response.json()["id"]
    stored = client.get(f"/v1/files/{file_id}/content", headers=tenant_a.headers)
    assert stored.content == content
    listed = client.get("/v1/files", headers=tenant_a.headers).json()["data"][0]
    assert listed["stats"] == stats


def test_content_as_text_parts_is_the_example_its_joined_string_makes():
    assert parse_example(PARTS, 1) == parse_example(tool_line(), 1)
    system = {"role": "system", "content": text_parts("Be ", "brief.")}
    with_system = {**tool_line(), "messages": [system, *tool_line()["messages"]]}
    plain = {**tool_line(), "messages": [system | {"content": "Be brief."}, *PARTS["messages"]]}
    assert parse_example(with_system, 1) == parse_example(plain, 1)


def test_an_image_part_is_refused_as_untrainable(client: TestClient, tenant_a: Tenant):
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    line = with_message(0, content=[*text_parts("What is this?"), image])
    problem = upload(client, tenant_a, jsonl(line)).json()["error"]["problems"][0]
    assert (problem["field"], problem["code"]) == (
        "messages[0].content[1].type",
        "unsupported_content_part",
    )
    assert "only text parts can be trained on this server" in problem["message"]
    assert "'image_url'" in problem["message"]


BAD_FILES: list[tuple[str, bytes, int, str]] = [
    ("unrecognized_key", jsonl(chat_line("q", "a", source="web")), 1, "source"),
    ("unrecognized_key", jsonl({"prompt": "a", "completion": "b", "id": 3}), 1, "id"),
    ("unrecognized_key", jsonl(tool_line(tools=[{**TOOL, "x": 1}])), 1, "tools[0].x"),
    (
        "message_unrecognized_key",
        jsonl(with_message(1, tool_calls=[{**call(), "index": 0}])),
        1,
        "messages[1].tool_calls[0].index",
    ),
    (
        "message_unrecognized_key",
        jsonl({"conversations": [{"from": "human", "value": "x", "role": "user"}]}),
        1,
        "conversations[0].role",
    ),
    ("json_array_not_jsonl", b'[\n  {"text": "a"},\n  {"text": "b"}\n]\n', 1, "file"),
    (
        "invalid_tool_calls",
        jsonl(with_message(1, tool_calls=[{"id": "c1", "type": "function"}])),
        1,
        "messages[1].tool_calls[0].function",
    ),
    (
        "invalid_tool_calls",
        jsonl(with_message(0, tool_calls=[call()])),
        1,
        "messages[0].tool_calls",
    ),
    (
        "invalid_tool_arguments",
        jsonl(with_message(1, tool_calls=[call(arguments="{city: Paris}")])),
        1,
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "missing_tool_call_id",
        jsonl(with_message(2, tool_call_id=None)),
        1,
        "messages[2].tool_call_id",
    ),
    (
        "unknown_tool_call_id",
        jsonl(with_message(2, tool_call_id="c9")),
        1,
        "messages[2].tool_call_id",
    ),
    ("invalid_tools", jsonl(tool_line(tools={"get_weather": {}})), 1, "tools"),
    (
        "too_many_tool_calls",
        jsonl(with_message(1, tool_calls=[call(), call("c2")]) | {"parallel_tool_calls": False}),
        1,
        "messages[1].tool_calls",
    ),
    ("missing_conversations_list", jsonl({"conversations": []}), 1, "conversations"),
    ("missing_instruction", jsonl({"instruction": "", "output": "x"}), 1, "instruction"),
    ("missing_output", jsonl({"instruction": "x"}), 1, "output"),
    (
        "unrecognized_role",
        jsonl({"conversations": [{"from": "bot", "value": "x"}]}),
        1,
        "conversations[0].from",
    ),
    ("mixed_formats", jsonl(ALPACA, SHAREGPT), 2, "line"),
    (
        "unsupported_content_part",
        jsonl(with_message(3, content=[{"type": "input_audio", "input_audio": {}}])),
        1,
        "messages[3].content[0].type",
    ),
    (
        "invalid_content_part",
        jsonl(with_message(0, content=["Weather in Paris?"])),
        1,
        "messages[0].content[0]",
    ),
    (
        "invalid_content_part",
        jsonl(with_message(0, content=[{"text": "Weather in Paris?"}])),
        1,
        "messages[0].content[0].type",
    ),
    (
        "invalid_content_part",
        jsonl(with_message(0, content=[{"type": "text"}])),
        1,
        "messages[0].content[0].text",
    ),
    (
        "invalid_content_part",
        jsonl(with_message(2, content=[{"type": "text", "text": 21}])),
        1,
        "messages[2].content[0].text",
    ),
    (
        "message_unrecognized_key",
        jsonl(with_message(3, content=[{"type": "text", "text": "Sunny.", "cache": True}])),
        1,
        "messages[3].content[0].cache",
    ),
    ("missing_content", jsonl(with_message(0, content=[])), 1, "messages[0].content"),
    ("missing_content", jsonl(with_message(3, content=text_parts(""))), 1, "messages[3].content"),
    ("invalid_content", jsonl(with_message(0, content={"type": "text"})), 1, "messages[0].content"),
]


@pytest.mark.parametrize(
    ("code", "content", "line", "field"),
    BAD_FILES,
    ids=[f"{case[0]}-{case[3]}" for case in BAD_FILES],
)
def test_a_bad_file_names_the_line_the_field_and_the_code(
    client: TestClient,
    tenant_a: Tenant,
    code: str,
    content: bytes,
    line: int,
    field: str,
):
    response = upload(client, tenant_a, content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code
    first = error["problems"][0]
    assert (first["line"], first["field"], first["code"]) == (line, field, code)


def test_a_json_array_file_gets_one_problem_saying_so(client: TestClient, tenant_a: Tenant):
    rows = [json.dumps(chat_line(f"q{i}", "a")) for i in range(30)]
    response = upload(client, tenant_a, ("[" + ",\n".join(rows) + "]\n").encode())
    error = response.json()["error"]
    assert error["problem_count"] == 1
    assert error["code"] == "json_array_not_jsonl"
    assert "JSON array, not JSON Lines" in error["message"]


def test_a_line_in_no_known_format_names_its_keys_and_the_nearest_format(
    client: TestClient, tenant_a: Tenant
):
    response = upload(client, tenant_a, jsonl({"instruction_text": "x", "answer": "y"}))
    problem = response.json()["error"]["problems"][0]
    assert problem["code"] == "unrecognized_format"
    assert "'instruction_text', 'answer'" in problem["message"]
    assert "nearest known format is alpaca" in problem["message"]


@pytest.fixture
def tool_file(client: TestClient, tenant_a: Tenant) -> str:
    response = upload(client, tenant_a, jsonl(*[tool_line()] * 12))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def local_model(directory: Path, template: str | None) -> str:
    """A local catalog model: its config.json and tokenizer_config.json (no weights)."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    tokenizer_config = {"chat_template": template} if template is not None else {}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return str(directory)


PLAIN_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
TOOLS_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}" + PLAIN_TEMPLATE


def test_tools_on_a_base_whose_template_cannot_write_them_are_refused_at_creation(
    client: TestClient,
    tenant_a: Tenant,
    tool_file: str,
    training_file: str,
    settings: Settings,
    tmp_path: Path,
    enqueuer: RecordingEnqueuer,
):
    settings.models = {
        "local/plain": {"path": local_model(tmp_path / "plain", PLAIN_TEMPLATE)},
        "local/tools": {"path": local_model(tmp_path / "tools", TOOLS_TEMPLATE)},
        "local/none": {"path": local_model(tmp_path / "none", None)},
    }
    refused = create_job(client, tenant_a, tool_file, model="local/plain")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("chat_template_no_tools", "model")
    assert "local/plain" in error["message"]
    as_validation = create_job(
        client, tenant_a, training_file, model="local/plain", validation_file=tool_file
    )
    assert as_validation.json()["error"]["code"] == "chat_template_no_tools"
    assert enqueuer.sent == []
    # A template that writes tools, none at all (the worker gives it loraforge's), the
    # built-in, and a file without tools on the plain template: all accepted.
    for model, file_id in [
        ("local/tools", tool_file),
        ("local/none", tool_file),
        ("loraforge/tiny-random-llama", tool_file),
        ("local/plain", training_file),
    ]:
        response = create_job(client, tenant_a, file_id, model=model)
        assert response.status_code == 200, (model, response.text)


def test_the_tool_call_example_file_is_accepted(client: TestClient, tenant_a: Tenant):
    example = Path(__file__).resolve().parents[2] / "examples" / "weather-tools.jsonl"
    response = upload(client, tenant_a, example.read_bytes(), example.name)
    assert response.status_code == 200, response.text
    assert response.json()["stats"]["tool_examples"] == response.json()["stats"]["examples"] == 16
