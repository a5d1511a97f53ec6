"""Which format a line is in, and the one parser for each.

A format is known by its signature keys (any one present picks it, first format first) and
allows a fixed set of top-level keys; a key outside that set is refused, as a message's
unknown key is. A new format is one more entry in FORMATS.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.datasets.chat import CHAT_KEYS, parse_chat
from app.datasets.converted import ALPACA_KEYS, SHAREGPT_KEYS, parse_alpaca, parse_sharegpt
from app.datasets.examples import (
    Example,
    Problem,
    SourceFormat,
    problem,
    unknown_key,
    unknown_key_problem,
)
from app.datasets.preference import PREFERENCE_KEYS, parse_preference

# Only the first keys of a line are named or compared: a line may hold thousands.
KEYS_COMPARED = 20


@dataclass(frozen=True)
class Format:
    name: SourceFormat
    signature: tuple[str, ...]
    keys: frozenset[str]
    parse: Callable[[dict[str, Any], int], Example | list[Problem]]


def _parse_prompt_completion(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    for key in ("prompt", "completion"):
        value = obj.get(key)
        if value is None:
            return problem(line, key, f"missing_{key}", f"{key} is missing")
        if not isinstance(value, str):
            return problem(line, key, "invalid_field_type", f"{key} must be a string")
    if not obj["completion"]:
        return problem(line, "completion", "missing_completion", "completion is empty")
    return Example(format="prompt_completion", prompt=obj["prompt"], completion=obj["completion"])


def _parse_text(obj: dict[str, Any], line: int) -> Example | list[Problem]:
    text = obj.get("text")
    if not isinstance(text, str):
        return problem(line, "text", "invalid_field_type", "text must be a string")
    if not text:
        return problem(line, "text", "missing_text", "text is empty")
    return Example(format="text", text=text)


FORMATS: tuple[Format, ...] = (
    Format("chat", ("messages",), CHAT_KEYS, parse_chat),
    Format("sharegpt", ("conversations",), SHAREGPT_KEYS, parse_sharegpt),
    Format("alpaca", ("instruction", "output"), ALPACA_KEYS, parse_alpaca),
    # After alpaca, whose lines may also have an "input".
    Format(
        "preference",
        ("input", "preferred_output", "non_preferred_output"),
        PREFERENCE_KEYS,
        parse_preference,
    ),
    Format(
        "prompt_completion",
        ("prompt", "completion"),
        frozenset({"prompt", "completion"}),
        _parse_prompt_completion,
    ),
    Format("text", ("text",), frozenset({"text"}), _parse_text),
)


# (signature key, its format), in FORMATS' order: one lookup per key on the hot path.
SIGNATURES: tuple[tuple[str, Format], ...] = tuple(
    (key, candidate) for candidate in FORMATS for key in candidate.signature
)


def detect_format(obj: dict[str, Any]) -> Format | None:
    """The first format one of whose signature keys the line has."""
    for key, candidate in SIGNATURES:
        if key in obj:
            return candidate
    return None


def nearest_format(keys: list[str]) -> Format | None:
    """The format whose keys the line's keys (or near misspellings of them) match most."""
    best, best_score = None, 0
    for candidate in FORMATS:
        allowed = sorted(candidate.keys)
        score = sum(1 for key in keys if difflib.get_close_matches(key, allowed, n=1, cutoff=0.75))
        if score > best_score:
            best, best_score = candidate, score
    return best


def unrecognized_format(obj: dict[str, Any], line: int) -> list[Problem]:
    """Name the keys the line has and the nearest known format."""
    keys = [str(key) for key in list(obj)[:KEYS_COMPARED]]
    has = ", ".join(repr(key) for key in keys) + (", ..." if len(obj) > len(keys) else "")
    found = f"no known format has the keys {has}" if keys else "the line is an empty object"
    nearest = nearest_format(keys)
    if nearest is None:
        names = "; ".join(f"{f.name} ({', '.join(f.signature)})" for f in FORMATS)
        advice = f"known formats: {names}"
    else:
        advice = (
            f"the nearest known format is {nearest.name}, whose keys are "
            f"{', '.join(sorted(nearest.keys))}"
        )
    return problem(line, "line", "unrecognized_format", f"{found}: {advice}")


def parse_example(obj: object, line: int) -> Example | list[Problem]:
    """Turn one decoded JSON line into an Example, or say what is wrong with it."""
    if not isinstance(obj, dict):
        return problem(line, "line", "example_not_object", "each line must be a JSON object")
    kind = detect_format(obj)
    if kind is None:
        return unrecognized_format(obj, line)
    key = unknown_key(obj, kind.keys)
    if key is not None:
        return unknown_key_problem(line, "", key, kind.keys)
    return kind.parse(obj, line)
