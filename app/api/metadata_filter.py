"""OpenAI's metadata filter on job lists: `metadata[key]=value` pairs (a deepObject query
parameter, which FastAPI cannot parse or declare itself), or `metadata=null`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from app.errors import InvalidRequest
from app.schemas.common import NO_CONTROL_CHARACTERS
from app.schemas.jobs import MAX_METADATA_PAIRS, MetadataFilter

METADATA_KEY = re.compile(r"^metadata\[(.*)\]$", re.DOTALL)
# Declared on the route with openapi_extra.
METADATA_PARAMETER: dict[str, Any] = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": (
        "Only jobs whose metadata has every pair given as `metadata[key]=value` (an empty "
        "value matches an empty string); `metadata=null` instead: only jobs without metadata"
    ),
    "schema": {
        "type": "object",
        "maxProperties": MAX_METADATA_PAIRS,
        "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": NO_CONTROL_CHARACTERS},
        "additionalProperties": {
            "type": "string",
            "maxLength": 512,
            "pattern": NO_CONTROL_CHARACTERS,
        },
    },
}


def _malformed(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="metadata", code="invalid_metadata_filter")


def metadata_filter(request: Request) -> MetadataFilter | None:
    """The query's metadata filter, or 400 naming what is malformed."""
    pairs: dict[str, str] = {}
    without_metadata = False
    for name, value in request.query_params.multi_items():
        if name == "metadata":
            if value != "null":
                raise _malformed(
                    "filter with metadata[key]=value, or metadata=null for jobs without metadata"
                )
            without_metadata = True
        elif (found := METADATA_KEY.match(name)) is not None:
            key = found.group(1)
            if not 1 <= len(key) <= 64 or len(value) > 512 or key in pairs:
                raise _malformed(
                    f"metadata[{key[:64]}]: keys are 1 to 64 characters, given once, and "
                    "values at most 512"
                )
            pairs[key] = value
    if without_metadata and pairs:
        raise _malformed("give metadata[key]=value pairs or metadata=null, not both")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise _malformed(f"at most {MAX_METADATA_PAIRS} metadata pairs")
    if not pairs and not without_metadata:
        return None
    return MetadataFilter(pairs=pairs, without_metadata=without_metadata)
