"""`loraforge worker`: a Celery worker (solo pool, one task at a time) plus the reaper."""

from __future__ import annotations

import os

from app.config import Settings
from worker import context as worker_context
from worker.celery_app import create_celery
from worker.context import WorkerContext
from worker.metrics import serve_metrics
from worker.reaper import Reaper
from worker.shutdown import GracefulStop
from worker.webhooks import WebhookDispatcher


def default_queues(settings: Settings) -> list[str]:
    """Every training queue this deployment routes to, plus exports and webhooks."""
    training = list(settings.queue_memory) or [settings.job_queue]
    return [*training, settings.export_queue, settings.webhook_queue]


def run_worker(
    settings: Settings,
    queues: list[str] | None = None,
    *,
    reaper: bool = True,
    loglevel: str = "INFO",
) -> None:
    """Block running a worker until it is told to stop."""
    context = WorkerContext.from_settings(settings)
    worker_context._context = context
    GracefulStop(context.stopping, settings.stop_grace_s).install()
    # Measured before consuming (it imports torch: seconds): a taken message is then claimed at
    # once, and a reaper never finds the job queued while the broker no longer holds it.
    _ = context.device_memory_bytes
    if reaper:
        # A stopping worker reaps no more: it would publish the job it just handed back to
        # the queue its own consumer still reads.
        Reaper(context.session_factory, settings, context.enqueuer, context.stopping).start()
    WebhookDispatcher(context.session_factory, settings, context.stopping).start()
    if settings.worker_metrics_port:
        serve_metrics(settings.worker_metrics_port)
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--queues",
            ",".join(queues or default_queues(settings)),
            "--hostname",
            f"loraforge-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            loglevel,
        ]
    )
