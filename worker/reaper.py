"""The reaper: recovery comes from the database, never from broker redelivery.

- running jobs whose lease expired go back to queued (or fail after max_attempts);
- queued jobs never published are published; of those published, as many as the broker lost
  (a restarted Redis) are published again: a job merely waiting for a busy worker is not, so
  the queue holds about one message per queued job however long they wait.

Safe to run in every worker at once: each change is a compare-and-set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job
from app.queue import Enqueuer
from app.services.events import add_event
from app.services.jobs import publish
from app.services.transitions import compare_and_set
from app.services.webhooks import record_job_event
from worker.metrics import REAPER_ACTIONS

log = logging.getLogger(__name__)
BATCH = 100


def requeue_expired(session: Session, settings: Settings) -> list[str]:
    """Running jobs with an expired lease -> queued (attempt bounded) or failed."""
    now = utcnow()
    expired = session.scalars(
        select(Job).where(Job.status == "running", Job.lease_expires_at < now).limit(BATCH)
    ).all()
    requeued = []
    for job in expired:
        fence = {"attempt": job.attempt, "lease_owner": job.lease_owner}
        if job.attempt >= settings.max_attempts:
            message = f"the worker was lost {job.attempt} times; giving up"
            error = {"code": "max_attempts_exceeded", "param": None, "message": message}
            if compare_and_set(
                session,
                job.id,
                from_statuses={"running"},
                to_status="failed",
                where=fence,
                lease_owner=None,
                lease_expires_at=None,
                error=error,
                finished_at=now,
            ):
                add_event(session, job, message, level="error")
                record_job_event(session, job.id, job.organization_id, "failed")
            session.commit()
            continue
        if compare_and_set(
            session,
            job.id,
            from_statuses={"running"},
            to_status="queued",
            where=fence,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
        ):
            add_event(
                session,
                job,
                f"Worker lost during attempt {job.attempt} (lease expired); "
                "re-queued to resume from the newest complete checkpoint",
                level="warn",
            )
            requeued.append(job.id)
        session.commit()
    return requeued


def republish_unclaimed(session: Session, settings: Settings, enqueuer: Enqueuer) -> list[str]:
    """Queued jobs never published, and published ones whose messages the broker lost."""
    unpublished = session.scalars(
        select(Job)
        .where(Job.status == "queued", Job.enqueued_at.is_(None))
        .order_by(Job.created_at)
        .limit(BATCH)
    ).all()
    queues = session.scalars(
        select(Job.queue)
        .where(Job.status == "queued", Job.enqueued_at.is_not(None))
        .group_by(Job.queue)
    ).all()
    lost = [job for queue in queues for job in lost_messages(session, settings, enqueuer, queue)]
    return [job.id for job in [*unpublished, *lost] if publish(session, settings, enqueuer, job)]


def lost_messages(
    session: Session, settings: Settings, enqueuer: Enqueuer, queue: str
) -> Sequence[Job]:
    """The jobs of `queue` the database believes published beyond the messages the broker
    holds, oldest published first, among those published over requeue_after_s ago.

    A message a worker has taken but whose job it has not claimed yet counts as lost for that
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
        .select_from(Job)
        .where(Job.status == "queued", Job.queue == queue, Job.enqueued_at.is_not(None))
    )
    shortfall = min((published or 0) - held, BATCH)
    if shortfall <= 0:
        return []
    stale = utcnow() - timedelta(seconds=settings.requeue_after_s)
    return session.scalars(
        select(Job)
        .where(Job.status == "queued", Job.queue == queue, Job.enqueued_at < stale)
        .order_by(Job.enqueued_at)
        .limit(shortfall)
    ).all()


def reap_once(factory: sessionmaker[Session], settings: Settings, enqueuer: Enqueuer) -> None:
    with factory() as session:
        for job_id in requeue_expired(session, settings):
            REAPER_ACTIONS.labels("requeued").inc()
            log.warning("re-queued job %s after its lease expired", job_id)
        for job_id in republish_unclaimed(session, settings, enqueuer):
            REAPER_ACTIONS.labels("published").inc()
            log.info("published job %s again", job_id)


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
