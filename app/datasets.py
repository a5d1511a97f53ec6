"""Fine-tuning datasets: one JSON object per line, in one of three formats.

- chat: {"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight"?: 0|1}]}
- prompt_completion: {"prompt": str, "completion": str}
- text: {"text": str}

The API validates every line of an upload with `validate_stream` before it keeps the file;
the training engine reads the same file back with `read_examples`. Both share `parse_example`,
so what the API accepts is exactly what the trainer understands.

Problems carry a 1-based line number, the field, a stable code and a message; a problem about
the whole file (too few examples) carries line 0 and field "file".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

DatasetFormat = Literal["chat", "prompt_completion", "text"]
Role = Literal["system", "user", "assistant"]

ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})
MESSAGE_KEYS: frozenset[str] = frozenset({"role", "content", "weight", "name"})
UTF8_BOM = b"\xef\xbb\xbf"
READ_CHUNK = 1 << 16


# Not frozen: a frozen dataclass's __init__ goes through object.__setattr__ per field, and an
# upload builds one Message per message line (frozen, validation ran at 75 MB/s, not 88).
@dataclass(slots=True)
class Message:
    role: Role
    content: str
    # None: the default (assistant messages are trained on, others are not); 0 or 1 overrides.
    weight: int | None = None

    @property
    def trained(self) -> bool:
        """Whether the loss is taken on this message under `train_on: assistant`."""
        return self.role == "assistant" and self.weight != 0


@dataclass(slots=True)
class Example:
    format: DatasetFormat
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""

    @property
    def characters(self) -> int:
        return (
            sum(len(m.content) for m in self.messages)
            + len(self.prompt)
            + len(self.completion)
            + len(self.text)
        )


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    field: str
    code: str
    message: str


@dataclass(slots=True)
class DatasetStats:
    examples: int = 0
    format: DatasetFormat | None = None
    characters: int = 0
    messages: int = 0


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


def detect_format(obj: dict[str, object]) -> DatasetFormat | None:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    return None


def _problem(line: int, field_name: str, code: str, message: str) -> list[Problem]:
    return [Problem(line, field_name, code, message)]


def _parse_message(raw: object, line: int, index: int) -> Message | list[Problem]:
    if not isinstance(raw, dict):
        return _problem(
            line, f"messages[{index}]", "invalid_message", "each message must be a JSON object"
        )
    if not MESSAGE_KEYS.issuperset(raw):
        unknown = sorted(set(raw) - MESSAGE_KEYS)
        return _problem(
            line,
            f"messages[{index}].{unknown[0]}",
            "message_unrecognized_key",
            f"unrecognized key {unknown[0]!r}; allowed: role, content, weight, name",
        )
    role = raw.get("role")
    if role not in ROLES:
        return _problem(
            line,
            f"messages[{index}].role",
            "unrecognized_role",
            f"role must be one of system, user, assistant (got {role!r})",
        )
    content = raw.get("content")
    if content is None or content == "":
        return _problem(
            line, f"messages[{index}].content", "missing_content", "content is missing or empty"
        )
    if not isinstance(content, str):
        return _problem(
            line, f"messages[{index}].content", "invalid_content", "content must be a string"
        )
    weight = raw.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        return _problem(
            line, f"messages[{index}].weight", "invalid_weight", "weight must be 0 or 1"
        )
    if weight is not None and role != "assistant":
        return _problem(
            line,
            f"messages[{index}].weight",
            "invalid_weight",
            "weight is only allowed on assistant messages",
        )
    return Message(role=role, content=content, weight=weight)  # type: ignore[arg-type]


def _parse_chat(obj: dict[str, object], line: int) -> Example | list[Problem]:
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        return _problem(
            line, "messages", "missing_messages_list", "messages must be a non-empty list"
        )
    messages: list[Message] = []
    for index, raw in enumerate(raw_messages):
        parsed = _parse_message(raw, line, index)
        if isinstance(parsed, list):
            return parsed
        messages.append(parsed)
    if not any(m.role == "assistant" for m in messages):
        return _problem(
            line,
            "messages",
            "example_missing_assistant_message",
            "each example needs at least one assistant message to learn from",
        )
    if not any(m.trained for m in messages):
        return _problem(
            line,
            "messages",
            "example_no_trained_message",
            "every assistant message has weight 0, so this example teaches nothing",
        )
    return Example(format="chat", messages=tuple(messages))


def _parse_prompt_completion(obj: dict[str, object], line: int) -> Example | list[Problem]:
    for key in ("prompt", "completion"):
        value = obj.get(key)
        if value is None:
            return _problem(line, key, f"missing_{key}", f"{key} is missing")
        if not isinstance(value, str):
            return _problem(line, key, "invalid_field_type", f"{key} must be a string")
    if not obj["completion"]:
        return _problem(line, "completion", "missing_completion", "completion is empty")
    return Example(format="prompt_completion", prompt=obj["prompt"], completion=obj["completion"])  # type: ignore[arg-type]


def _parse_text(obj: dict[str, object], line: int) -> Example | list[Problem]:
    text = obj.get("text")
    if not isinstance(text, str):
        return _problem(line, "text", "invalid_field_type", "text must be a string")
    if not text:
        return _problem(line, "text", "missing_text", "text is empty")
    return Example(format="text", text=text)


def parse_example(obj: object, line: int) -> Example | list[Problem]:
    """Turn one decoded JSON line into an Example, or say what is wrong with it."""
    if not isinstance(obj, dict):
        return _problem(line, "line", "example_not_object", "each line must be a JSON object")
    kind = detect_format(obj)
    if kind == "chat":
        return _parse_chat(obj, line)
    if kind == "prompt_completion":
        return _parse_prompt_completion(obj, line)
    if kind == "text":
        return _parse_text(obj, line)
    return _problem(
        line,
        "line",
        "unrecognized_format",
        'expected "messages", "prompt"/"completion" or "text"',
    )


def iter_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (1-based number, bytes without the line break); None for a line over the cap.

    Memory stays bounded by the cap: an over-long line is skipped, not buffered.
    """
    number = 0
    while True:
        # Room for a CRLF (and a BOM on line 1) beyond the cap: neither counts toward it.
        limit = max_line_bytes + 2 + (len(UTF8_BOM) if number == 0 else 0)
        chunk = stream.readline(limit)
        if not chunk:
            return
        number += 1
        unfinished = len(chunk) == limit and not chunk.endswith(b"\n")
        line = chunk[len(UTF8_BOM) :] if number == 1 and chunk.startswith(UTF8_BOM) else chunk
        line = line.rstrip(b"\r\n")
        if unfinished or len(line) > max_line_bytes:
            while chunk and not chunk.endswith(b"\n"):
                chunk = stream.readline(READ_CHUNK)
            yield number, None
            continue
        yield number, line


def parse_line(raw: bytes, line: int) -> Example | list[Problem]:
    """Decode one line's bytes as UTF-8 JSON and parse it, or say why it cannot be."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _problem(line, "line", "invalid_utf8", f"not valid UTF-8 at byte {exc.start}")
    try:
        decoded = json.loads(text)
    except RecursionError:
        return _problem(line, "line", "invalid_json", "JSON nested too deeply")
    except ValueError as exc:
        return _problem(line, "line", "invalid_json", f"not valid JSON: {exc}")
    return parse_example(decoded, line)


def validate_stream(
    stream: BinaryIO,
    *,
    max_line_bytes: int = 4 << 20,
    min_examples: int = 1,
    max_problems: int = 100,
) -> ValidationReport:
    """Check every line of a JSONL dataset; never raises on bad content."""
    report = ValidationReport()
    stats = report.stats
    for line, raw in iter_lines(stream, max_line_bytes):
        if raw is None:
            report.add(
                Problem(line, "line", "line_too_long", f"line is over {max_line_bytes} bytes"),
                max_problems,
            )
            continue
        if not raw.strip():
            continue
        parsed = parse_line(raw, line)
        if isinstance(parsed, list):
            for problem in parsed:
                report.add(problem, max_problems)
            continue
        if stats.format is None:
            stats.format = parsed.format
        elif parsed.format != stats.format:
            report.add(
                Problem(
                    line,
                    "line",
                    "mixed_formats",
                    f"this line is {parsed.format} but the file started as {stats.format}",
                ),
                max_problems,
            )
            continue
        stats.examples += 1
        stats.characters += parsed.characters
        stats.messages += len(parsed.messages)
    if report.problem_count == 0 and stats.examples < min_examples:
        report.add(
            Problem(
                0,
                "file",
                "too_few_examples",
                f"{stats.examples} examples; at least {min_examples} are required",
            ),
            max_problems,
        )
    return report


def read_examples(path: Path, *, max_line_bytes: int = 4 << 20) -> list[Example]:
    """Read a dataset for training; raise DatasetError at the first bad line."""
    examples: list[Example] = []
    with path.open("rb") as stream:
        for line, raw in iter_lines(stream, max_line_bytes):
            if raw is None:
                raise DatasetError(
                    [Problem(line, "line", "line_too_long", f"over {max_line_bytes} bytes")]
                )
            if not raw.strip():
                continue
            parsed = parse_line(raw, line)
            if isinstance(parsed, list):
                raise DatasetError(parsed)
            examples.append(parsed)
    if not examples:
        raise DatasetError([Problem(0, "file", "too_few_examples", "the dataset has no examples")])
    return examples
