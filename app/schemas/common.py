"""Shapes shared by every resource: lists and errors."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

Item = TypeVar("Item")
# What free-text fields and query parameters (cursors, names) declare they match.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class ListPage(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, items: list[Item], has_more: bool) -> ListPage[Item]:
        ids = [getattr(item, "id", None) for item in items]
        return cls(
            data=items,
            has_more=has_more,
            first_id=ids[0] if ids else None,
            last_id=ids[-1] if ids else None,
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None
    # + loraforge: a dataset's problems (1-based line, field, code, message) ...
    problems: list[dict[str, Any]] | None = None
    problem_count: int | None = None
    # ... and every field a request failed on (the first one is `param`).
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool
