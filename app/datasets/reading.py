"""Reading a JSONL dataset: every line of an upload checked, or a file read for training.

The API validates every line of an upload with `validate_stream` before it keeps the file;
the training engine reads the same file back with `read_examples`. Both share `parse_line`,
so what the API accepts is exactly what the trainer understands.

Problems carry a 1-based line number, the field, a stable code and a message; a problem about
the whole file (too few examples) carries line 0 and field "file".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.datasets.examples import DatasetError, Example, Problem, ValidationReport, problem
from app.datasets.formats import parse_example

UTF8_BOM = b"\xef\xbb\xbf"
READ_CHUNK = 1 << 16
# How far into a file to look for the `[` that opens a JSON array.
ARRAY_SNIFF_BYTES = 4096


def json_array_problem(stream: BinaryIO) -> Problem | None:
    """One problem for a file that is a JSON array (starts with `[`), not JSON Lines.

    Looks at the first bytes and seeks back; a stream that cannot seek is not checked.
    """
    if not stream.seekable():
        return None
    start = stream.tell()
    head = stream.read(ARRAY_SNIFF_BYTES)
    stream.seek(start)
    body = head.removeprefix(UTF8_BOM)
    stripped = body.lstrip()
    if not stripped.startswith(b"["):
        return None
    line = body[: len(body) - len(stripped)].count(b"\n") + 1
    return Problem(
        line,
        "file",
        "json_array_not_jsonl",
        "the file is a JSON array, not JSON Lines: write one JSON object per line, without "
        "the enclosing [ ] and commas (for example: jq -c '.[]' data.json > data.jsonl)",
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
        return problem(line, "line", "invalid_utf8", f"not valid UTF-8 at byte {exc.start}")
    try:
        decoded = json.loads(text)
    except RecursionError:
        return problem(line, "line", "invalid_json", "JSON nested too deeply")
    except ValueError as exc:
        return problem(line, "line", "invalid_json", f"not valid JSON: {exc}")
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
    array = json_array_problem(stream)
    if array is not None:
        report.add(array, max_problems)
        return report
    source = None
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
            for found in parsed:
                report.add(found, max_problems)
            continue
        if source is None:
            source = parsed.source_format
            stats.format = parsed.format
            stats.converted_from = source if source != parsed.format else None
        elif parsed.source_format != source:
            report.add(
                Problem(
                    line,
                    "line",
                    "mixed_formats",
                    f"this line is {parsed.source_format} but the file started as {source}",
                ),
                max_problems,
            )
            continue
        stats.examples += 1
        stats.characters += parsed.characters
        stats.messages += len(parsed.messages)
        stats.tool_examples += parsed.uses_tools
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
        array = json_array_problem(stream)
        if array is not None:
            raise DatasetError([array])
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
