"""Property tests of the dataset validator: whatever the bytes, it answers with problems that
carry a line, a field and a stable code, and never raises; the trainer's reader agrees."""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.datasets import (
    UTF8_BOM,
    DatasetError,
    Example,
    Problem,
    ValidationReport,
    parse_example,
    read_examples,
    validate_stream,
)

README = Path(__file__).resolve().parents[2] / "README.md"
# The codes a client may see; README's Datasets section lists them. Changing one breaks clients.
PROBLEM_CODES = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "line_too_long",
        "example_not_object",
        "unrecognized_format",
        "mixed_formats",
        "missing_messages_list",
        "invalid_message",
        "message_unrecognized_key",
        "unrecognized_role",
        "missing_content",
        "invalid_content",
        "invalid_content_part",
        "unsupported_content_part",
        "invalid_weight",
        "example_missing_assistant_message",
        "example_no_trained_message",
        "missing_prompt",
        "missing_completion",
        "missing_text",
        "invalid_field_type",
        "too_few_examples",
        "unrecognized_key",
        "json_array_not_jsonl",
        "invalid_tool_calls",
        "invalid_tool_arguments",
        "missing_tool_call_id",
        "unknown_tool_call_id",
        "invalid_tools",
        "too_many_tool_calls",
        "missing_conversations_list",
        "missing_instruction",
        "missing_output",
        "missing_input",
        "invalid_input",
        "input_ends_with_assistant",
        "input_ends_with_system",
        "missing_preferred_output",
        "missing_non_preferred_output",
        "invalid_output",
    }
)
MAX_LINE = 256
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "function", "", None])
call_ids = st.sampled_from(["c1", "c2", "", None])
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"id": call_ids, "type": st.sampled_from(["function", "other"])},
        optional={
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "", None])},
                optional={"arguments": st.sampled_from(['{"a": 1}', "{bad", "", {"a": 1}, 3])},
            )
            | json_values,
            "extra": json_values,
        },
    ),
    max_size=2,
)
content_parts = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["text", "image_url", "", None]),
            "text": st.text(max_size=20) | json_values,
            "extra": json_values,
        },
    )
    | json_values,
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles, "content": st.text(max_size=20) | content_parts | json_values},
        optional={
            "weight": st.sampled_from([0, 1, 2, True, None, 0.5]),
            "extra": json_values,
            "tool_calls": tool_calls | json_values,
            "tool_call_id": call_ids,
        },
    ),
    max_size=4,
)
turns = st.lists(
    st.fixed_dictionaries(
        {
            "from": st.sampled_from(["human", "gpt", "system", "tool", "function_call", "x"]),
            "value": st.text(max_size=20) | json_values,
        },
        optional={"extra": json_values},
    ),
    max_size=4,
)
# Lines that look like each format, with any value in any field, and any JSON at all.
examples = st.one_of(
    st.fixed_dictionaries(
        {"messages": messages | json_values},
        optional={"tools": json_values, "parallel_tool_calls": json_values, "extra": json_values},
    ),
    st.fixed_dictionaries(
        {"conversations": turns | json_values},
        optional={"system": json_values, "tools": json_values},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "instruction": st.text(max_size=20) | json_values,
            "input": st.text(max_size=20) | json_values,
            "output": st.text(max_size=20) | json_values,
            "history": json_values,
        },
    ),
    st.fixed_dictionaries(
        {}, optional={"prompt": st.text(max_size=20) | json_values, "completion": json_values}
    ),
    st.fixed_dictionaries({"text": st.text(max_size=30) | json_values}),
    json_values,
)
line_bytes = st.one_of(
    examples.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=MAX_LINE + 8),
    st.sampled_from([b"", b"   ", b"{", b"\xff\xfe", b'{"text": "\xc3\x28"}', b"[" * 2000]),
)
files = st.lists(line_bytes, max_size=12).flatmap(
    lambda lines: st.tuples(
        st.just(lines), st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.booleans()
    )
)


def assemble(lines: list[bytes], newline: bytes, bom: bool, final_newline: bool) -> bytes:
    body = newline.join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines)
    return (UTF8_BOM if bom else b"") + body + (newline if final_newline and lines else b"")


def assert_well_formed(problems: list[Problem], line_count: int) -> None:
    for problem in problems:
        assert problem.code in PROBLEM_CODES, problem
        assert isinstance(problem.field, str) and problem.field, problem
        assert isinstance(problem.message, str) and problem.message, problem
        if problem.code == "too_few_examples":
            assert (problem.line, problem.field) == (0, "file")
        else:
            assert 1 <= problem.line <= line_count, (problem, line_count)


def validate(content: bytes, **options: Any) -> ValidationReport:
    return validate_stream(io.BytesIO(content), max_line_bytes=MAX_LINE, **options)


@PROPERTY_SETTINGS
@given(st.binary(max_size=2048))
@example(b"\xef\xbb\xbf")
@example(b"\r\n\r\n")
@example(b"[" * 200 + b"\n")
def test_any_bytes_get_a_report_never_an_exception(content: bytes):
    report = validate(content, min_examples=1, max_problems=5)
    assert len(report.problems) <= 5 <= 5 + report.problem_count
    assert report.problem_count >= len(report.problems)
    assert report.ok == (report.problem_count == 0)
    assert_well_formed(report.problems, content.count(b"\n") + 1)


@PROPERTY_SETTINGS
@given(files)
def test_dataset_shaped_files_get_problems_with_line_field_and_code(
    generated: tuple[list[bytes], bytes, bool, bool],
):
    lines, newline, bom, final = generated
    content = assemble(lines, newline, bom, final)
    report = validate(content, min_examples=1)
    assert_well_formed(report.problems, max(1, len(lines)))
    if report.ok:
        assert report.stats.examples >= 1 and report.stats.format is not None


@PROPERTY_SETTINGS
@given(files)
def test_the_trainers_reader_accepts_exactly_what_the_validator_accepts(
    generated: tuple[list[bytes], bytes, bool, bool],
):
    content = assemble(*generated)
    report = validate(content, min_examples=1)
    codes = {problem.code for problem in report.problems}
    try:
        read = read_bytes(content)
    except DatasetError as exc:
        assert_well_formed(exc.problems, max(1, len(generated[0])))
        assert not report.ok
        if "mixed_formats" not in codes:  # the reader does not compare lines' formats
            first, reported = exc.problems[0], report.problems[0]
            assert (first.line, first.field, first.code) == (
                reported.line,
                reported.field,
                reported.code,
            )
    else:
        assert codes <= {"mixed_formats"}
        assert len(read) >= report.stats.examples


def read_bytes(content: bytes) -> list[Example]:
    """read_examples over `content` (it reads a path, as the worker does)."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as handle:
        handle.write(content)
        handle.flush()
        return read_examples(Path(handle.name), max_line_bytes=MAX_LINE)


@PROPERTY_SETTINGS
@given(json_values | examples)
def test_parse_example_returns_an_example_or_problems_for_any_json(value: Any):
    parsed = parse_example(value, 7)
    if isinstance(parsed, list):
        assert parsed
        assert_well_formed(parsed, 7)
        assert all(problem.line == 7 for problem in parsed)
    else:
        assert isinstance(parsed, Example)
        assert parsed.characters > 0


VALID = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"prompt": "2+2=", "completion": "4"},
    {"text": "plain text"},
]


@pytest.mark.parametrize("row", VALID, ids=["chat", "prompt_completion", "text"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
def test_bom_and_crlf_change_nothing(row: dict[str, Any], newline: bytes, bom: bool):
    lines = [json.dumps(row).encode()] * 3
    plain = validate(b"\n".join(lines) + b"\n", min_examples=3)
    variant = validate((UTF8_BOM if bom else b"") + newline.join(lines) + newline, min_examples=3)
    assert plain.ok and variant.ok, variant.problems
    assert variant.stats == plain.stats


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
def test_the_line_cap_counts_the_line_not_its_break_or_bom(newline: bytes, bom: bool):
    text = json.dumps({"text": ""})
    at_cap = json.dumps({"text": "x" * (MAX_LINE - len(text))}).encode()
    over_cap = json.dumps({"text": "x" * (MAX_LINE - len(text) + 1)}).encode()
    assert len(at_cap) == MAX_LINE
    prefix = UTF8_BOM if bom else b""
    report = validate(prefix + newline.join([at_cap, over_cap, at_cap]) + newline)
    assert [(p.line, p.code) for p in report.problems] == [(2, "line_too_long")]
    assert report.stats.examples == 2


def test_invalid_utf8_is_reported_at_its_line_and_byte():
    good = json.dumps(VALID[2]).encode()
    report = validate(b"\n".join([good, b'{"text": "caf\xe9"}', good]) + b"\n")
    (problem,) = report.problems
    assert (problem.line, problem.field, problem.code) == (2, "line", "invalid_utf8")
    assert "byte 13" in problem.message


def test_a_long_line_is_skipped_without_losing_count_of_the_lines_after_it():
    good = json.dumps(VALID[2]).encode()
    huge = b'{"text": "' + b"y" * (MAX_LINE * 40) + b'"}'
    report = validate(b"\n".join([good, huge, b"not json", good]) + b"\n")
    assert [(p.line, p.code) for p in report.problems] == [
        (2, "line_too_long"),
        (3, "invalid_json"),
    ]


@pytest.mark.parametrize("depth", [100, 5_000, 100_000])
def test_deep_nesting_is_a_problem_not_a_crash(depth: int):
    nested = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
    report = validate_stream(io.BytesIO(nested + b"\n"), max_line_bytes=1 << 20)
    (problem,) = report.problems
    assert problem.line == 1
    assert problem.code in {"invalid_json", "invalid_field_type"}


def test_many_problems_are_counted_but_only_the_first_hundred_kept():
    report = validate(b"nope\n" * 1000)
    assert report.problem_count == 1000
    assert len(report.problems) == 100
    assert [p.line for p in report.problems] == list(range(1, 101))


def test_the_readme_lists_every_problem_code():
    listed = set(re.findall(r"`([a-z0-9_]+)`", README.read_text().split("## Datasets", 1)[1]))
    assert listed >= PROBLEM_CODES
