"""What a dataset line becomes once parsed: an Example of chat, prompt/completion or text,
and the Problems that say why a line could not become one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

# What the trainer learns from; Alpaca and ShareGPT lines become chat.
# "preference": OpenAI's DPO pairs, which only DPO jobs train on.
DatasetFormat = Literal["chat", "prompt_completion", "text", "preference"]
# What a line was written in; the file object reports it as `converted_from` when not chat.
SourceFormat = Literal["chat", "sharegpt", "alpaca", "prompt_completion", "text", "preference"]
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True)
class ToolCall:
    """One function call an assistant message makes (OpenAI's `tool_calls` item)."""

    id: str
    name: str
    # The decoded JSON of `arguments`: chat templates write it back with tojson.
    arguments: Any

    def to_template(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @property
    def characters(self) -> int:
        return len(self.name) + len(json.dumps(self.arguments))


# Not frozen: a frozen dataclass's __init__ goes through object.__setattr__ per field, and an
# upload builds one Message per message line (frozen, validation ran at 75 MB/s, not 88).
@dataclass(slots=True)
class Message:
    role: Role
    content: str
    # None: the default (assistant messages are trained on, others are not); 0 or 1 overrides.
    weight: int | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def trained(self) -> bool:
        """Whether the loss is taken on this message under `train_on: assistant`."""
        return self.role == "assistant" and self.weight != 0

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates read it (transformers' chat format)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.to_template() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    @property
    def characters(self) -> int:
        if not self.tool_calls:
            return len(self.content)
        return len(self.content) + sum(call.characters for call in self.tool_calls)


@dataclass(slots=True)
class Example:
    format: DatasetFormat
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""
    # Function definitions in OpenAI's shape ({"type": "function", "function": {...}}).
    tools: tuple[dict[str, Any], ...] = ()
    source: SourceFormat | None = None
    # A preference pair: `messages` and `tools` are its input, these the two answers to it.
    preferred: Message | None = None
    non_preferred: Message | None = None

    @property
    def uses_tools(self) -> bool:
        """Whether rendering needs a chat template that writes tools or tool calls."""
        if self.tools:
            return True
        answers = [m for m in (self.preferred, self.non_preferred) if m is not None]
        return any(
            message.tool_calls or message.role == "tool" for message in (*self.messages, *answers)
        )

    @property
    def characters(self) -> int:
        answers = [m for m in (self.preferred, self.non_preferred) if m is not None]
        return (
            sum([m.characters for m in (*self.messages, *answers)])
            + len(self.prompt)
            + len(self.completion)
            + len(self.text)
        )

    @property
    def source_format(self) -> SourceFormat:
        return self.source or self.format


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    field: str
    code: str
    message: str


def problem(line: int, field_name: str, code: str, message: str) -> list[Problem]:
    """A parse result that is one problem."""
    return [Problem(line, field_name, code, message)]


def unknown_key(raw: dict[str, Any], allowed: frozenset[str]) -> str | None:
    """The first key (sorted) of `raw` that `allowed` lacks."""
    if allowed.issuperset(raw):
        return None
    return sorted(set(raw) - allowed)[0]


def unknown_key_problem(
    line: int, where: str, key: str, allowed: frozenset[str], code: str = "unrecognized_key"
) -> list[Problem]:
    """`key` refused at `where`, naming the keys allowed there."""
    shown = key or '""'
    field = f"{where}.{shown}" if where else shown
    return problem(
        line, field, code, f"unrecognized key {key!r}; allowed: {', '.join(sorted(allowed))}"
    )


@dataclass(slots=True)
class DatasetStats:
    examples: int = 0
    format: DatasetFormat | None = None
    characters: int = 0
    messages: int = 0
    # "alpaca" or "sharegpt" when the lines were converted to chat; None for the others.
    converted_from: SourceFormat | None = None
    # Examples with tools, tool calls or tool results: they need a tools-capable template.
    tool_examples: int = 0


@dataclass(slots=True)
class ValidationReport:
    stats: DatasetStats = field(default_factory=DatasetStats)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem, max_problems: int) -> None:
        self.problem_count += 1
        if len(self.problems) < max_problems:
            self.problems.append(problem)


class DatasetError(ValueError):
    """A dataset the trainer cannot use; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        where = f"line {first.line}" if first.line else "file"
        super().__init__(f"{where}, {first.field}: {first.message} ({first.code})")
