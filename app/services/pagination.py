"""Cursor paging in OpenAI's style: newest first, `after` is the last id of the previous page."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from app.errors import CursorNotFound

Row = TypeVar("Row")


def page_by_created(
    session: Session,
    model: type[Row],
    stmt: Select[Row],
    *,
    organization_id: str,
    after: str | None,
    limit: int,
) -> tuple[list[Row], bool]:
    """One page of `stmt` ordered by (created_at, id) descending; returns (rows, has_more)."""
    table: Any = model
    if after:  # an empty cursor is no cursor
        anchor = session.execute(
            select(table.created_at).where(
                table.id == after, table.organization_id == organization_id
            )
        ).scalar_one_or_none()
        if anchor is None:
            raise CursorNotFound(f"no object with id {after!r} to page after")
        stmt = stmt.where(
            or_(table.created_at < anchor, and_(table.created_at == anchor, table.id < after))
        )
    stmt = stmt.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return rows[:limit], len(rows) > limit
