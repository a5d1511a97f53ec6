"""The reaper: recovery comes from the database, never from broker redelivery.

- running jobs and exports whose lease expired go back to queued (or fail once they have
  lost max_attempts workers);
- queued jobs never published are published; of those published, as many as the broker lost
  (a restarted Redis) are published again: a job merely waiting for a busy worker is not, so
  the queue holds about one message per queued job however long they wait; exports alike.

Safe to run in every worker at once: each change is a compare-and-set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Export, Job
from app.queue import Enqueuer
from app.services.events import add_event
from app.services.exports import publish_export
from app.services.jobs import publish
from app.services.transitions import compare_and_set
from app.services.webhooks import record_export_event, record_job_event
from worker.metrics import REAPER_ACTIONS

log = logging.getLogger(__name__)
BATCH = 100
Row = TypeVar("Row", Job, Export)


def requeue_expired(session: Session, settings: Settings) -> list[str]:
    """Running jobs with an expired lease -> queued, or failed at max_attempts lost workers."""
    requeued = []
    for job in _expired(session, Job):
        lost = job.lost_workers + 1
        outcome = _release_lost(session, settings, job, lost)
        if outcome == "failed":
            add_event(session, job, gave_up(job, lost), level="error")
            record_job_event(session, job.id, job.organization_id, "failed")
        elif outcome == "queued":
            add_event(
                session,
                job,
                f"Worker lost during attempt {job.attempt} (lease expired; lost worker {lost} "
                f"of {settings.max_attempts}); re-queued to resume from the newest complete "
                "checkpoint",
                level="warn",
            )
            requeued.append(job.id)
        session.commit()
    return requeued


def requeue_expired_exports(session: Session, settings: Settings) -> list[str]:
    """Running exports with an expired lease -> queued, or failed at max_attempts lost workers."""
    requeued = []
    for export in _expired(session, Export):
        lost = export.lost_workers + 1
        outcome = _release_lost(session, settings, export, lost)
        if outcome == "failed":
            record_export_event(session, export.id, export.job_id, export.organization_id, "failed")
        session.commit()
        if outcome == "queued":
            requeued.append(export.id)
        elif outcome == "failed":
            log.error("export %s failed: %s", export.id, gave_up(export, lost))
    return requeued


def gave_up(row: Job | Export, lost: int) -> str:
    """The error message of a row failed after `lost` lost workers."""
    what = "job" if isinstance(row, Job) else "export"
    return f"the worker running the {what} was lost {lost} times; giving up"


def _expired(session: Session, table: type[Row]) -> Sequence[Row]:
    return session.scalars(
        select(table)
        .where(table.status == "running", table.lease_expires_at < utcnow())
        .limit(BATCH)
    ).all()


def _release_lost(
    session: Session, settings: Settings, row: Job | Export, lost: int
) -> Literal["queued", "failed"] | None:
    """Record the `lost`th lost worker and queue the row again, or fail it once the budget is
    spent; None when another reaper (or the worker, back from a stall) changed it first.

    Counted only here, on a lease that expired: a pause, a resume or a worker handing its
    row back on its way out starts another attempt without spending the budget.
    """
    released: dict[str, Any] = {
        "from_statuses": {"running"},
        "where": {"attempt": row.attempt, "lease_owner": row.lease_owner},
        "table": type(row),
        "lease_owner": None,
        "lease_expires_at": None,
        "lost_workers": lost,
    }
    if lost >= settings.max_attempts:
        error = {"code": "max_attempts_exceeded", "param": None, "message": gave_up(row, lost)}
        failed = compare_and_set(
            session, row.id, to_status="failed", error=error, finished_at=utcnow(), **released
        )
        return "failed" if failed else None
    queued = compare_and_set(session, row.id, to_status="queued", enqueued_at=None, **released)
    return "queued" if queued else None


def republish_unclaimed(session: Session, settings: Settings, enqueuer: Enqueuer) -> list[str]:
    """Queued jobs never published, and published ones whose messages the broker lost."""
    queues = session.scalars(
        select(Job.queue)
        .where(Job.status == "queued", Job.enqueued_at.is_not(None))
        .group_by(Job.queue)
    ).all()
    lost = [job for queue in queues for job in lost_messages(session, settings, enqueuer, queue)]
    jobs = [*_unpublished(session, Job), *lost]
    return [job.id for job in jobs if publish(session, settings, enqueuer, job)]


def republish_unclaimed_exports(
    session: Session, settings: Settings, enqueuer: Enqueuer
) -> list[str]:
    """Queued exports never published, and published ones whose messages the broker lost."""
    lost = lost_messages(session, settings, enqueuer, settings.export_queue, Export)
    exports = [*_unpublished(session, Export), *lost]
    return [e.id for e in exports if publish_export(session, settings, enqueuer, e)]


def _unpublished(session: Session, table: type[Row]) -> Sequence[Row]:
    return session.scalars(
        select(table)
        .where(table.status == "queued", table.enqueued_at.is_(None))
        .order_by(table.created_at)
        .limit(BATCH)
    ).all()


def _in_queue(table: type[Row], queue: str) -> ColumnElement[bool]:
    # Every export goes to the one export queue; jobs record theirs (a GPU class).
    return Job.queue == queue if table is Job else true()


def lost_messages(
    session: Session,
    settings: Settings,
    enqueuer: Enqueuer,
    queue: str,
    table: type[Row] = Job,  # type: ignore[assignment]
) -> Sequence[Row]:
    """The rows of `queue` the database believes published beyond the messages the broker
    holds, oldest published first, among those published over requeue_after_s ago.

    A message a worker has taken but whose row it has not claimed yet counts as lost for that
    moment; the duplicate that may cause is skipped at the claim, like any duplicate. The
    message of a job cancelled while queued counts as held until a worker takes it: a loss
    is then found only after that.
    """
    try:
        held = enqueuer.waiting(queue)
    except Exception:
        log.warning("could not count the messages in %s; re-publishing none", queue, exc_info=True)
        return []
    published = session.scalar(
        select(func.count())
        .select_from(table)
        .where(table.status == "queued", _in_queue(table, queue), table.enqueued_at.is_not(None))
    )
    shortfall = min((published or 0) - held, BATCH)
    if shortfall <= 0:
        return []
    stale = utcnow() - timedelta(seconds=settings.requeue_after_s)
    return session.scalars(
        select(table)
        .where(table.status == "queued", _in_queue(table, queue), table.enqueued_at < stale)
        .order_by(table.enqueued_at)
        .limit(shortfall)
    ).all()


def reap_once(factory: sessionmaker[Session], settings: Settings, enqueuer: Enqueuer) -> None:
    with factory() as session:
        for job_id in requeue_expired(session, settings):
            REAPER_ACTIONS.labels("requeued").inc()
            log.warning(
                "re-queued job %s after its lease expired", job_id, extra={"job_id": job_id}
            )
        for job_id in republish_unclaimed(session, settings, enqueuer):
            REAPER_ACTIONS.labels("published").inc()
            log.info("published job %s again", job_id, extra={"job_id": job_id})
        for export_id in requeue_expired_exports(session, settings):
            log.warning(
                "re-queued export %s after its lease expired",
                export_id,
                extra={"export_id": export_id},
            )
        for export_id in republish_unclaimed_exports(session, settings, enqueuer):
            log.info("published export %s again", export_id, extra={"export_id": export_id})


class Reaper:
    """Runs reap_once every reaper_interval_s in a daemon thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        enqueuer: Enqueuer,
        stop: threading.Event | None = None,
    ) -> None:
        self.factory, self.settings, self.enqueuer = factory, settings, enqueuer
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                reap_once(self.factory, self.settings, self.enqueuer)
            except Exception:
                log.warning("reaper pass failed", exc_info=True)
