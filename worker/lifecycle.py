"""Claiming, leasing and finishing leased rows: jobs and exports. Every write is fenced on
(attempt, lease_owner): a worker that lost its lease (the reaper gave the row to another
attempt) writes nothing."""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import Job
from app.services.transitions import Leased, compare_and_set

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """host:pid:random, unique per worker process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Claim:
    """The right to run one attempt of a job (or of another leased row: an export)."""

    row_id: str
    attempt: int
    owner: str
    table: Leased = Job

    def __str__(self) -> str:
        return f"{self.table.__tablename__} {self.row_id} attempt {self.attempt}"

    @property
    def fence(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "lease_owner": self.owner}


def claim(
    session: Session, row_id: str, owner: str, lease_seconds: float, *, table: Leased = Job
) -> Claim | None:
    """queued -> running with attempt+1 and a lease, or None if someone else has it."""
    now = utcnow()
    claimed = compare_and_set(
        session,
        row_id,
        from_statuses={"queued"},
        to_status="running",
        table=table,
        attempt=table.attempt + 1,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        started_at=func.coalesce(table.started_at, now),
    )
    if not claimed:
        session.rollback()
        return None
    session.commit()
    attempt = session.execute(select(table.attempt).where(table.id == row_id)).scalar_one()
    return Claim(row_id, attempt, owner, table)


def extend_lease(session: Session, claim: Claim, lease_seconds: float) -> bool:
    """Push the lease forward; False when the row is no longer ours."""
    extended = compare_and_set(
        session,
        claim.row_id,
        from_statuses={"running"},
        where=claim.fence,
        table=claim.table,
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
    )
    session.commit()
    return extended


def finish(session: Session, claim: Claim, to_status: str, **values: Any) -> bool:
    """running -> a final (or paused/queued) status, releasing the lease; fenced."""
    done = compare_and_set(
        session,
        claim.row_id,
        from_statuses={"running"},
        to_status=to_status,
        where=claim.fence,
        table=claim.table,
        lease_owner=None,
        lease_expires_at=None,
        **values,
    )
    if not done:
        session.rollback()
        log.warning("%s lost its lease; not writing %s", claim, to_status)
        return False
    return True


class Heartbeat:
    """A daemon thread that extends the lease; `lost` is set once the lease is gone."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        claim: Claim,
        lease_seconds: float,
        interval_seconds: float,
    ) -> None:
        self.factory = factory
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        # In the caller's context: its records carry the job's (or export's) log fields.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run,),
            name="lease-heartbeat",
            daemon=True,
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_seconds + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                with self.factory() as session:
                    if not extend_lease(session, self.claim, self.lease_seconds):
                        self.lost.set()
                        return
            except Exception:
                # A database hiccup is not a lost lease: try again at the next beat.
                log.warning("heartbeat for %s failed", self.claim, exc_info=True)
