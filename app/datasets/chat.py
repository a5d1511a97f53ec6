"""OpenAI's chat format: messages, with tools, tool calls and tool results.

{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool, "functions"?: [...]}; a
message has role system/user/assistant/tool (or the legacy function), content (a string, or
a list of text parts: content.py), and optionally weight (assistant), name, tool_calls
(assistant), tool_call_id (tool) or the legacy function_call (assistant). Every key anywhere
is known or refused.
"""

from __future__ import annotations

import json
from typing import Any

from app.datasets.content import parse_content
from app.datasets.examples import (
    Example,
    Message,
    Problem,
    ToolCall,
    problem,
    unknown_key,
    unknown_key_problem,
)

CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call"}
)
PLAIN_KEYS = frozenset({"role", "content", "weight", "name"})
PLAIN_ROLES = frozenset({"system", "user", "assistant"})
TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
CALLED_FUNCTION_KEYS = frozenset({"name", "arguments"})
TOOL_KEYS = frozenset({"type", "function"})
FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})


def parse_arguments(raw: object, line: int, where: str) -> Any | list[Problem]:
    """A call's arguments: a string holding JSON, as OpenAI writes them (an object also
    passes, as datasets built for chat templates write them); the decoded value."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
    return problem(
        line,
        f"{where}.arguments",
        "invalid_tool_arguments",
        'arguments must be a string holding JSON, such as \'{"city": "Paris"}\'',
    )


def parse_called_function(
    raw: object, line: int, where: str, call_id: str
) -> ToolCall | list[Problem]:
    """{"name", "arguments"}: what `function` of a tool call and `function_call` hold."""
    if not isinstance(raw, dict):
        return problem(line, where, "invalid_tool_calls", "must be an object with name, arguments")
    key = unknown_key(raw, CALLED_FUNCTION_KEYS)
    if key is not None:
        return unknown_key_problem(
            line, where, key, CALLED_FUNCTION_KEYS, "message_unrecognized_key"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return problem(
            line, f"{where}.name", "invalid_tool_calls", "the function name must be a string"
        )
    arguments = parse_arguments(raw.get("arguments"), line, where)
    if isinstance(arguments, list):
        return arguments
    return ToolCall(id=call_id, name=name, arguments=arguments)


def parse_tool_call(raw: object, line: int, where: str) -> ToolCall | list[Problem]:
    """{"id", "type": "function", "function": {"name", "arguments"}}."""
    if not isinstance(raw, dict):
        return problem(line, where, "invalid_tool_calls", "each tool call must be an object")
    key = unknown_key(raw, TOOL_CALL_KEYS)
    if key is not None:
        return unknown_key_problem(line, where, key, TOOL_CALL_KEYS, "message_unrecognized_key")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        return problem(line, f"{where}.id", "invalid_tool_calls", "id must be a non-empty string")
    if raw.get("type", "function") != "function":
        return problem(line, f"{where}.type", "invalid_tool_calls", 'type must be "function"')
    return parse_called_function(raw.get("function"), line, f"{where}.function", call_id)


def parse_tool_calls(
    raw: dict[str, Any], line: int, where: str, index: int
) -> tuple[ToolCall, ...] | list[Problem]:
    """tool_calls (or the legacy function_call) of an assistant message."""
    if raw.get("function_call") is not None:
        legacy = parse_called_function(
            raw["function_call"], line, f"{where}.function_call", f"call_{index}"
        )
        return legacy if isinstance(legacy, list) else (legacy,)
    calls = raw.get("tool_calls")
    if calls is None:
        return ()
    if not isinstance(calls, list) or not calls:
        return problem(
            line, f"{where}.tool_calls", "invalid_tool_calls", "tool_calls must be a non-empty list"
        )
    parsed: list[ToolCall] = []
    for number, call in enumerate(calls):
        result = parse_tool_call(call, line, f"{where}.tool_calls[{number}]")
        if isinstance(result, list):
            return result
        parsed.append(result)
    return tuple(parsed)


def _content(raw: dict[str, Any], line: int, where: str, optional: bool) -> str | list[Problem]:
    """The message's text (its parts joined); empty only where `optional` (tool calls)."""
    content = raw.get("content")
    if optional and content is None:
        return ""
    text = "" if content is None else parse_content(content, line, f"{where}.content")
    if isinstance(text, list):
        return text
    if text == "" and not optional:
        return problem(line, f"{where}.content", "missing_content", "content is missing or empty")
    return text


def parse_message(
    raw: object, line: int, index: int, call_ids: set[str], field: str = "messages"
) -> Message | list[Problem]:
    """One message, item `index` of `field`; `call_ids` holds the tool call ids of the
    messages before it."""
    # The common message (no tools, nothing wrong) on a short path: uploads are validated
    # line by line, and the full checks below cost a third of the throughput.
    if isinstance(raw, dict) and PLAIN_KEYS.issuperset(raw):
        role, content = raw.get("role"), raw.get("content")
        weight, name = raw.get("weight"), raw.get("name")
        if (
            isinstance(role, str)
            and role in PLAIN_ROLES
            and isinstance(content, str)
            and content
            and (name is None or isinstance(name, str))
            and (
                weight is None
                or (role == "assistant" and not isinstance(weight, bool) and weight in (0, 1))
            )
        ):
            return Message(role, content, weight, name)  # type: ignore[arg-type]
    return _parse_message(raw, line, index, call_ids, field)


def _parse_message(
    raw: object, line: int, index: int, call_ids: set[str], field: str
) -> Message | list[Problem]:
    """parse_message's every check, each failure with its own problem."""
    where = f"{field}[{index}]"
    if not isinstance(raw, dict):
        return problem(line, where, "invalid_message", "each message must be a JSON object")
    key = unknown_key(raw, MESSAGE_KEYS)
    if key is not None:
        return unknown_key_problem(line, where, key, MESSAGE_KEYS, "message_unrecognized_key")
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        return problem(
            line,
            f"{where}.role",
            "unrecognized_role",
            f"role must be one of system, user, assistant, tool (got {role!r})",
        )
    calls_given = raw.get("tool_calls") is not None or raw.get("function_call") is not None
    if calls_given and role != "assistant":
        field = "tool_calls" if raw.get("tool_calls") is not None else "function_call"
        return problem(
            line, f"{where}.{field}", "invalid_tool_calls", "only assistant messages call tools"
        )
    tool_calls = parse_tool_calls(raw, line, where, index) if role == "assistant" else ()
    if isinstance(tool_calls, list):
        return tool_calls
    content = _content(raw, line, where, optional=bool(tool_calls))
    if isinstance(content, list):
        return content
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        return problem(line, f"{where}.name", "invalid_field_type", "name must be a string")
    weight = raw.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        return problem(line, f"{where}.weight", "invalid_weight", "weight must be 0 or 1")
    if weight is not None and role != "assistant":
        return problem(
            line,
            f"{where}.weight",
            "invalid_weight",
            "weight is only allowed on assistant messages",
        )
    tool_call_id = raw.get("tool_call_id")
    if role == "tool":
        if not isinstance(tool_call_id, str) or not tool_call_id:
            return problem(
                line,
                f"{where}.tool_call_id",
                "missing_tool_call_id",
                "a tool message needs the tool_call_id of the call it answers",
            )
        if tool_call_id not in call_ids:
            return problem(
                line,
                f"{where}.tool_call_id",
                "unknown_tool_call_id",
                f"no assistant message before this one made a tool call with id {tool_call_id!r}",
            )
    elif tool_call_id is not None:
        return problem(
            line,
            f"{where}.tool_call_id",
            "invalid_message",
            "tool_call_id is only allowed on tool messages",
        )
    return Message(
        role="tool" if role == "function" else role,  # type: ignore[arg-type]
        content=content,
        weight=weight,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
    )


def parse_tools(raw: object, line: int, field: str) -> tuple[dict[str, Any], ...] | list[Problem]:
    """`tools` ([{"type": "function", "function": {...}}]) or the legacy `functions`
    ([{...}]), in tools' shape."""
    if not isinstance(raw, list):
        return problem(line, field, "invalid_tools", f"{field} must be a list")
    tools: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if not field.endswith("functions"):  # tools wrap each function in {"type", "function"}
            if not isinstance(item, dict):
                return problem(line, where, "invalid_tools", "each tool must be an object")
            key = unknown_key(item, TOOL_KEYS)
            if key is not None:
                return unknown_key_problem(line, where, key, TOOL_KEYS)
            if item.get("type") != "function":
                return problem(line, f"{where}.type", "invalid_tools", 'type must be "function"')
            item, where = item.get("function"), f"{where}.function"
        function = parse_function(item, line, where)
        if isinstance(function, list):
            return function
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def parse_function(raw: object, line: int, where: str) -> dict[str, Any] | list[Problem]:
    """A function definition: name, and optionally description, parameters (JSON Schema)."""
    if not isinstance(raw, dict):
        return problem(line, where, "invalid_tools", "a function must be an object")
    key = unknown_key(raw, FUNCTION_KEYS)
    if key is not None:
        return unknown_key_problem(line, where, key, FUNCTION_KEYS)
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        return problem(line, f"{where}.name", "invalid_tools", "a function needs a name")
    if "parameters" in raw and not isinstance(raw["parameters"], dict):
        return problem(
            line, f"{where}.parameters", "invalid_tools", "parameters must be a JSON Schema object"
        )
    return raw


def parse_messages(
    raw_messages: object, line: int, field: str = "messages"
) -> tuple[Message, ...] | list[Problem]:
    """The messages of a chat line, checked one by one."""
    if not isinstance(raw_messages, list) or not raw_messages:
        return problem(line, field, "missing_messages_list", f"{field} must be a non-empty list")
    messages: list[Message] = []
    call_ids: set[str] = set()
    for index, raw in enumerate(raw_messages):
        parsed = parse_message(raw, line, index, call_ids, field)
        if isinstance(parsed, list):
            return parsed
        if parsed.tool_calls:
            call_ids.update(call.id for call in parsed.tool_calls)
        messages.append(parsed)
    return tuple(messages)


def check_conversation(messages: tuple[Message, ...], line: int, field: str) -> list[Problem]:
    """What every conversation needs, whatever format it came in: something to learn."""
    if not any(m.role == "assistant" for m in messages):
        return problem(
            line,
            field,
            "example_missing_assistant_message",
            "each example needs at least one assistant message to learn from",
        )
    if not any(m.trained for m in messages):
        return problem(
            line,
            field,
            "example_no_trained_message",
            "every assistant message has weight 0, so this example teaches nothing",
        )
    return []


def parse_chat(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    """An OpenAI chat line."""
    messages = parse_messages(obj["messages"], line)
    if isinstance(messages, list):
        return messages
    tools = parse_tool_options(obj, line, messages)
    if isinstance(tools, list):
        return tools
    problems = check_conversation(messages, line, "messages")
    if problems:
        return problems
    return Example(format="chat", messages=messages, tools=tools, source="chat")


def parse_tool_options(
    obj: dict[str, Any], line: int, messages: tuple[Message, ...], where: str = ""
) -> tuple[dict[str, Any], ...] | list[Problem]:
    """The tools (or legacy functions) of `obj`, whose `messages` respect its
    parallel_tool_calls; `where` is the path to `obj` in its line ("" at the top)."""
    prefix = f"{where}." if where else ""
    tools: tuple[dict[str, Any], ...] = ()
    for field in ("tools", "functions"):
        if obj.get(field) is not None:
            parsed = parse_tools(obj[field], line, f"{prefix}{field}")
            if isinstance(parsed, list):
                return parsed
            tools += parsed
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        return problem(
            line,
            f"{prefix}parallel_tool_calls",
            "invalid_field_type",
            "parallel_tool_calls must be a boolean",
        )
    if parallel is False:
        for index, message in enumerate(messages):
            if len(message.tool_calls) > 1:
                return problem(
                    line,
                    f"{prefix}messages[{index}].tool_calls",
                    "too_many_tool_calls",
                    "parallel_tool_calls is false, so a message may make one tool call only",
                )
    return tools
