"""Alpaca and ShareGPT lines, converted to chat as LLaMA-Factory and axolotl read them.

- alpaca: {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
  -> [system] + history turns + user(instruction, "\n", input) + assistant(output).
- sharegpt: {"conversations": [{"from", "value"}], "system"?, "tools"?} with from human, gpt,
  system, tool, and LLaMA-Factory's function_call (a JSON {"name", "arguments"}, or a list of
  them) and observation (a tool result).
"""

from __future__ import annotations

import json
from typing import Any

from app.datasets.chat import check_conversation, parse_arguments, parse_function
from app.datasets.examples import (
    Example,
    Message,
    Problem,
    ToolCall,
    problem,
    unknown_key,
    unknown_key_problem,
)

ALPACA_KEYS = frozenset({"instruction", "input", "output", "system", "history"})
SHAREGPT_KEYS = frozenset({"conversations", "system", "tools"})
TURN_KEYS = frozenset({"from", "value"})
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_call": "assistant",
}


def _string(obj: dict[str, Any], key: str, line: int, required: bool) -> str | list[Problem]:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if value is not None and not isinstance(value, str):
        return problem(line, key, "invalid_field_type", f"{key} must be a string")
    if not value and required:
        return problem(line, key, f"missing_{key}", f"{key} is missing or empty")
    return value or ""


def _history(raw: object, line: int) -> tuple[Message, ...] | list[Problem]:
    if not isinstance(raw, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) and t for t in turn)
        for turn in raw
    ):
        return problem(
            line, "history", "invalid_field_type", "history must be a list of [user, assistant]"
        )
    messages: list[Message] = []
    for user, assistant in raw:
        messages += [
            Message(role="user", content=user),
            Message(role="assistant", content=assistant),
        ]
    return tuple(messages)


def parse_alpaca(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    """An Alpaca line as a chat of system (if any), the history, one question, one answer."""
    values: dict[str, str] = {}
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        value = _string(obj, key, line, required)
        if isinstance(value, list):
            return value
        values[key] = value
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        return problem(line, "system", "invalid_field_type", "system must be a string")
    messages: list[Message] = [Message(role="system", content=system)] if system else []
    if obj.get("history") is not None:
        history = _history(obj["history"], line)
        if isinstance(history, list):
            return history
        messages += history
    question = "\n".join(part for part in (values["instruction"], values["input"]) if part)
    messages += [
        Message(role="user", content=question),
        Message(role="assistant", content=values["output"]),
    ]
    return Example(format="chat", messages=tuple(messages), source="alpaca")


def _function_calls(
    value: str, line: int, where: str, index: int
) -> tuple[ToolCall, ...] | list[Problem]:
    """A function_call turn's value: JSON {"name", "arguments"} or a list of them."""
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        decoded = None
    calls = decoded if isinstance(decoded, list) else [decoded]
    parsed: list[ToolCall] = []
    for number, call in enumerate(calls):
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
            return problem(
                line,
                f"{where}.value",
                "invalid_tool_calls",
                'a function_call turn holds JSON {"name": ..., "arguments": {...}}',
            )
        arguments = parse_arguments(call.get("arguments", {}), line, f"{where}.value")
        if isinstance(arguments, list):
            return arguments
        parsed.append(ToolCall(id=f"call_{index}_{number}", name=call["name"], arguments=arguments))
    return tuple(parsed)


def _turn(raw: object, line: int, index: int, last_call: str | None) -> Message | list[Problem]:
    where = f"conversations[{index}]"
    if not isinstance(raw, dict):
        return problem(line, where, "invalid_message", "each turn must be a JSON object")
    key = unknown_key(raw, TURN_KEYS)
    if key is not None:
        return unknown_key_problem(line, where, key, TURN_KEYS, "message_unrecognized_key")
    source = raw.get("from")
    if not isinstance(source, str) or source not in SHAREGPT_ROLES:
        return problem(
            line,
            f"{where}.from",
            "unrecognized_role",
            f"from must be one of {', '.join(SHAREGPT_ROLES)} (got {source!r})",
        )
    value = raw.get("value")
    if not isinstance(value, str):
        code = "missing_content" if value is None else "invalid_content"
        return problem(line, f"{where}.value", code, "value must be a string")
    if not value:
        return problem(line, f"{where}.value", "missing_content", "value is empty")
    role = SHAREGPT_ROLES[source]
    if source == "function_call":
        calls = _function_calls(value, line, where, index)
        if isinstance(calls, list):
            return calls
        return Message(role="assistant", content="", tool_calls=calls)
    if role == "tool":
        return Message(role="tool", content=value, tool_call_id=last_call)
    return Message(role=role, content=value)  # type: ignore[arg-type]


def _sharegpt_tools(raw: object, line: int) -> tuple[dict[str, Any], ...] | list[Problem]:
    """LLaMA-Factory's tools: a JSON string (or a list) of function definitions."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except (ValueError, RecursionError):
            return problem(
                line, "tools", "invalid_tools", "tools must be a list or a JSON string of one"
            )
    if not isinstance(raw, list):
        return problem(
            line, "tools", "invalid_tools", "tools must be a list or a JSON string of one"
        )
    tools: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        # Either a bare function definition or OpenAI's {"type": "function", "function": ...}.
        if isinstance(item, dict) and item.get("type") == "function" and "function" in item:
            item = item["function"]
        function = parse_function(item, line, f"tools[{index}]")
        if isinstance(function, list):
            return function
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def parse_sharegpt(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    """A ShareGPT line as a chat."""
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        return problem(
            line,
            "conversations",
            "missing_conversations_list",
            "conversations must be a non-empty list",
        )
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        return problem(line, "system", "invalid_field_type", "system must be a string")
    messages: list[Message] = [Message(role="system", content=system)] if system else []
    last_call: str | None = None
    for index, raw in enumerate(turns):
        message = _turn(raw, line, index, last_call)
        if isinstance(message, list):
            return message
        if message.tool_calls:
            last_call = message.tool_calls[-1].id
        messages.append(message)
    tools: tuple[dict[str, Any], ...] = ()
    if obj.get("tools") is not None:
        parsed = _sharegpt_tools(obj["tools"], line)
        if isinstance(parsed, list):
            return parsed
        tools = parsed
    problems = check_conversation(tuple(messages), line, "conversations")
    if problems:
        return problems
    return Example(format="chat", messages=tuple(messages), tools=tools, source="sharegpt")
