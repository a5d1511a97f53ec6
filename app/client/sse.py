"""Server-sent event frames from the lines of a text/event-stream response."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    event: str
    data: str
    id: str | None = None


def parse_frames(lines: Iterable[str]) -> Iterator[Frame]:
    """Yield one Frame per blank-line-terminated frame; comments (keep-alives) are skipped."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data or event != "message":
                yield Frame(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            event_id = value
