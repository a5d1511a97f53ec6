"""Job state changes as compare-and-set UPDATEs: a change happens once or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from app.db.models import Job

ALLOWED: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    "running": frozenset({"queued", "paused", "succeeded", "failed", "cancelled"}),
    "paused": frozenset({"queued", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def compare_and_set(
    session: Session,
    job_id: str,
    *,
    from_statuses: Iterable[str],
    to_status: str | None = None,
    where: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """UPDATE the job only if its status is one of `from_statuses` (and `where` matches).

    Returns True when exactly one row changed. The caller commits.
    """
    sources = frozenset(from_statuses)
    if to_status is not None:
        illegal = [s for s in sources if to_status not in ALLOWED[s]]
        if illegal:
            raise ValueError(f"illegal transition {illegal} -> {to_status}")
        values["status"] = to_status
    # A Core UPDATE of the table: the ORM's bulk-update path adds its own compilation and
    # bookkeeping, and would skip synchronizing the session anyway.
    columns = Job.__mapper__.columns
    stmt = update(cast(Table, Job.__table__)).where(
        columns["id"] == job_id, columns["status"].in_(sources)
    )
    for attribute, expected in (where or {}).items():
        stmt = stmt.where(columns[attribute] == expected)
    result = session.execute(stmt.values({columns[a]: v for a, v in values.items()}))
    return result.rowcount == 1  # type: ignore[attr-defined]
