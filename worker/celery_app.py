"""Celery configured for hour-long GPU tasks (DESIGN §3)."""

from __future__ import annotations

from celery import Celery

from app.config import Settings

# Longer than any job: Redis would otherwise hand an unacked message to a second worker.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def create_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`' broker, with the training tasks registered."""
    broker_url = settings.resolved_broker_url()
    app = Celery("loraforge", broker=broker_url, include=["worker.tasks"])
    app.conf.update(
        # One task per process, and no prefetching: a queued job never waits behind a
        # long one on a busy worker while another worker is idle.
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        # Ack on receipt: recovery comes from the database's leases and the reaper, not from
        # redelivery (the SQLite transport cannot redeliver after a kill -9 anyway).
        task_acks_late=False,
        task_ignore_result=True,
        task_default_queue=settings.job_queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return app
