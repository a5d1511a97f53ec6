"""The reaper: recovery comes from the database, never from broker redelivery.

- running jobs whose lease expired go back to queued (or fail after max_attempts);
- queued jobs that nobody claimed are published again (a lost message, a restarted Redis).

Safe to run in every worker at once: each change is a compare-and-set.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job
from app.queue import Enqueuer
from app.services.events import add_event
from app.services.jobs import publish
from app.services.transitions import compare_and_set

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
    """Queued jobs never published, or published long ago and still unclaimed."""
    stale = utcnow() - timedelta(seconds=settings.requeue_after_s)
    jobs = session.scalars(
        select(Job)
        .where(Job.status == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale))
        .order_by(Job.created_at)
        .limit(BATCH)
    ).all()
    return [job.id for job in jobs if publish(session, settings, enqueuer, job)]


def reap_once(factory: sessionmaker[Session], settings: Settings, enqueuer: Enqueuer) -> None:
    with factory() as session:
        for job_id in requeue_expired(session, settings):
            log.warning("re-queued job %s after its lease expired", job_id)
        for job_id in republish_unclaimed(session, settings, enqueuer):
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
