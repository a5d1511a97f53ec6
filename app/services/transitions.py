"""State changes of leased rows (jobs, exports) as compare-and-set UPDATEs: a change happens
once or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any, cast

from sqlalchemy import ClauseElement, Table, Update, bindparam, update
from sqlalchemy.orm import Session

from app.db.models import Export, Job

Leased = type[Job] | type[Export]

ALLOWED: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    "running": frozenset({"queued", "paused", "succeeded", "failed", "cancelled"}),
    "paused": frozenset({"queued", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
EXPORT_ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed"}),
    # Back to queued when its worker is lost: another worker merges it again.
    "running": frozenset({"queued", "succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
}
TRANSITIONS: dict[Leased, dict[str, frozenset[str]]] = {Job: ALLOWED, Export: EXPORT_ALLOWED}


def compare_and_set(
    session: Session,
    row_id: str,
    *,
    from_statuses: Iterable[str],
    to_status: str | None = None,
    where: dict[str, Any] | None = None,
    table: Leased = Job,
    **values: Any,
) -> bool:
    """UPDATE the row of `table` only if its status is one of `from_statuses` (and `where`
    matches).

    Returns True when exactly one row changed. The caller commits.
    """
    sources = frozenset(from_statuses)
    if to_status is not None:
        allowed = TRANSITIONS[table]
        illegal = [s for s in sources if to_status not in allowed[s]]
        if illegal:
            raise ValueError(f"illegal transition {illegal} -> {to_status}")
        values["status"] = to_status
    where = where or {}
    if any(isinstance(v, ClauseElement) for v in (*values.values(), *where.values())):
        # A value computed in SQL (`attempt + 1`): a statement of its own, built for this call.
        stmt = _table_update(table, row_id, sources, where).values(_by_column(table, values))
        result = session.execute(stmt)
        return result.rowcount == 1  # type: ignore[attr-defined]
    # Compared with IS NULL or with "=": a different statement, so part of the shape.
    conditions = tuple(sorted((attribute, value is None) for attribute, value in where.items()))
    stmt = _statement(table, sources, conditions, tuple(sorted(values)))
    params = {"_row_id": row_id}
    params.update({f"_where_{a}": v for a, v in where.items() if v is not None})
    params.update({f"_set_{a}": v for a, v in values.items()})
    result = session.execute(stmt, params)
    return result.rowcount == 1  # type: ignore[attr-defined]


def _table_update(
    table: Leased, row_id: Any, sources: frozenset[str], where: dict[str, Any]
) -> Update:
    """A Core UPDATE of the table: the ORM's bulk-update path adds its own compilation and
    bookkeeping, and would skip synchronizing the session anyway."""
    columns = table.__mapper__.columns
    stmt = update(cast(Table, table.__table__)).where(
        columns["id"] == row_id, columns["status"].in_(sorted(sources))
    )
    for attribute, expected in where.items():
        stmt = stmt.where(columns[attribute] == expected)  # None compares with IS NULL
    return stmt


def _by_column(table: Leased, values: dict[str, Any]) -> dict[Any, Any]:
    columns = table.__mapper__.columns
    return {columns[attribute]: value for attribute, value in values.items()}


@cache
def _statement(
    table: Leased,
    sources: frozenset[str],
    conditions: tuple[tuple[str, bool], ...],
    assigned: tuple[str, ...],
) -> Update:
    """The UPDATE of one shape of change with plain values, built once: a call then only
    binds its values, and SQLAlchemy finds the compiled form by the statement it already has."""
    columns = table.__mapper__.columns
    where: dict[str, Any] = {
        attribute: None if is_null else bindparam(f"_where_{attribute}")
        for attribute, is_null in conditions
    }
    assigned_values = {a: bindparam(f"_set_{a}", type_=columns[a].type) for a in assigned}
    return _table_update(table, bindparam("_row_id"), sources, where).values(
        _by_column(table, assigned_values)
    )
