"""Range headers as the streamed (bucket) downloads read them."""

from __future__ import annotations

import pytest

from app.api.object_response import parse_ranges
from app.errors import InvalidRange, RangeNotSatisfiable


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", [(0, 10)]),
        ("bytes=990-", [(990, 1000)]),
        ("bytes=-10", [(990, 1000)]),
        ("bytes=-5000", [(0, 1000)]),
        ("bytes=900-5000", [(900, 1000)]),
        ("BYTES = 1-1", [(1, 2)]),
        ("bytes=0-0, 5-9", [(0, 1), (5, 10)]),
    ],
)
def test_ranges_are_half_open_and_clamped_to_the_object(header: str, expected: list):
    assert parse_ranges(header, 1000) == expected


@pytest.mark.parametrize(
    "header", ["items=0-1", "bytes=", "bytes=-", "bytes=abc-", "bytes=9-3", "bytes=5"]
)
def test_malformed_ranges_are_refused(header: str):
    with pytest.raises(InvalidRange):
        parse_ranges(header, 1000)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0"])
def test_ranges_past_the_end_are_not_satisfiable(header: str):
    with pytest.raises(RangeNotSatisfiable):
        parse_ranges(header, 1000)
