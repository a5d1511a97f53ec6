"""OpenAI's preference format: the pairs DPO jobs train on.

{"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
 "preferred_output": [one assistant message], "non_preferred_output": [one assistant message]}

The input is a chat (chat.py's messages and tools) that ends where the answers take over: on
a user or a tool message. Each output is one assistant message, with content or tool calls.
"""

from __future__ import annotations

from typing import Any

from app.datasets.chat import parse_message, parse_messages, parse_tool_options
from app.datasets.examples import (
    Example,
    Message,
    Problem,
    problem,
    unknown_key,
    unknown_key_problem,
)

PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
OUTPUT_FIELDS = ("preferred_output", "non_preferred_output")
# The roles an answer can follow: what the user asked, or what a tool the model called said;
# an input ending otherwise is refused as input_ends_with_assistant (or _system).
ANSWERED_ROLES = frozenset({"user", "tool"})


def parse_input(
    raw: object, line: int
) -> tuple[tuple[Message, ...], tuple[dict[str, Any], ...]] | list[Problem]:
    """The input's messages and tools."""
    if raw is None:
        return problem(line, "input", "missing_input", "input is missing")
    if not isinstance(raw, dict):
        return problem(
            line, "input", "invalid_input", "input must be an object with messages (and tools)"
        )
    key = unknown_key(raw, INPUT_KEYS)
    if key is not None:
        return unknown_key_problem(line, "input", key, INPUT_KEYS)
    messages = parse_messages(raw.get("messages"), line, "input.messages")
    if isinstance(messages, list):
        return messages
    tools = parse_tool_options(raw, line, messages, "input")
    if isinstance(tools, list):
        return tools
    if messages[-1].role not in ANSWERED_ROLES:
        return problem(
            line,
            f"input.messages[{len(messages) - 1}]",
            f"input_ends_with_{messages[-1].role}",
            "the input must end with a user or tool message, which both outputs answer",
        )
    return messages, tools


def parse_output(
    obj: dict[str, Any], field: str, line: int, call_ids: set[str]
) -> Message | list[Problem]:
    """One of the two answers: a list of exactly one assistant message."""
    raw = obj.get(field)
    if raw is None:
        return problem(line, field, f"missing_{field}", f"{field} is missing")
    if not isinstance(raw, list) or len(raw) != 1:
        expected = f"{field} must be a list of exactly one assistant message"
        return problem(line, field, "invalid_output", expected)
    message = parse_message(raw[0], line, 0, call_ids, field)
    if isinstance(message, list):
        return message
    if message.role != "assistant":
        return problem(
            line,
            f"{field}[0].role",
            "invalid_output",
            f"{field} must be an assistant message (got {message.role!r})",
        )
    if message.weight is not None:
        return problem(
            line, f"{field}[0].weight", "invalid_weight", "the outputs of a pair carry no weight"
        )
    return message


def parse_preference(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    """An OpenAI preference (DPO) line."""
    parsed_input = parse_input(obj.get("input"), line)
    if isinstance(parsed_input, list):
        return parsed_input
    messages, tools = parsed_input
    call_ids = {call.id for message in messages for call in message.tool_calls}
    answers: list[Message] = []
    for field in OUTPUT_FIELDS:
        answer = parse_output(obj, field, line, call_ids)
        if isinstance(answer, list):
            return answer
        if obj["input"].get("parallel_tool_calls") is False and len(answer.tool_calls) > 1:
            return problem(
                line,
                f"{field}[0].tool_calls",
                "too_many_tool_calls",
                "parallel_tool_calls is false, so an output may make one tool call only",
            )
        answers.append(answer)
    preferred, non_preferred = answers
    return Example(
        format="preference",
        messages=messages,
        tools=tools,
        source="preference",
        preferred=preferred,
        non_preferred=non_preferred,
    )
