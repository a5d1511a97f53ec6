"""A message's content: a string, or OpenAI's list of content parts.

Of the parts, this server trains on text only: [{"type": "text", "text": "..."}]. The parts'
texts are joined with no separator, the text the model sees; other parts (image_url,
input_audio, file) are refused as unsupported_content_part, malformed ones as
invalid_content_part.
"""

from __future__ import annotations

from app.datasets.examples import Problem, problem, unknown_key, unknown_key_problem

TEXT_PART_KEYS = frozenset({"type", "text"})


def parse_content(content: object, line: int, where: str) -> str | list[Problem]:
    """`content` (the field at `where`) as the text the model sees."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return problem(
            line, where, "invalid_content", "content must be a string or a list of text parts"
        )
    texts: list[str] = []
    for index, part in enumerate(content):
        text = parse_text_part(part, line, f"{where}[{index}]")
        if isinstance(text, list):
            return text
        texts.append(text)
    return "".join(texts)


def parse_text_part(part: object, line: int, where: str) -> str | list[Problem]:
    """One content part, which must be {"type": "text", "text": str}; its text."""
    if not isinstance(part, dict):
        return problem(
            line,
            where,
            "invalid_content_part",
            'each content part must be an object such as {"type": "text", "text": "..."}',
        )
    kind = part.get("type")
    if not isinstance(kind, str):
        return problem(
            line, f"{where}.type", "invalid_content_part", 'a content part needs a type, "text"'
        )
    if kind != "text":
        return problem(
            line,
            f"{where}.type",
            "unsupported_content_part",
            f"only text parts can be trained on this server (got a {kind!r} part)",
        )
    key = unknown_key(part, TEXT_PART_KEYS)
    if key is not None:
        return unknown_key_problem(line, where, key, TEXT_PART_KEYS, "message_unrecognized_key")
    text = part.get("text")
    if not isinstance(text, str):
        return problem(
            line, f"{where}.text", "invalid_content_part", "a text part's text must be a string"
        )
    return text
