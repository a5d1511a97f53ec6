"""`loraforge worker`: a Celery worker (solo pool, one task at a time) plus the reaper."""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from app.config import Settings
from app.observability.logs import configure_logging
from worker import context as worker_context
from worker.celery_app import create_celery
from worker.context import WorkerContext
from worker.metrics import serve_metrics
from worker.reaper import Reaper
from worker.shutdown import GracefulStop
from worker.training.quiet import library_logs_to_root
from worker.webhooks import WebhookDispatcher


def default_queues(settings: Settings) -> list[str]:
    """Every training queue this deployment routes to, plus exports and webhooks."""
    training = list(settings.queue_memory) or [settings.job_queue]
    return [*training, settings.export_queue, settings.webhook_queue]


def use_our_logging(settings: Settings) -> str:
    """Configure logging now, and again in place of Celery's own set-up (a receiver of
    `setup_logging` makes Celery leave the root logger and stdout alone); the format chosen."""
    chosen = configure_logging(settings.log_format, settings.log_level)
    library_logs_to_root(progress_bars=chosen == "text")

    def configure(**_kwargs: Any) -> None:
        configure_logging(settings.log_format, settings.log_level)

    signals.setup_logging.connect(configure, weak=False)
    return chosen


def run_worker(
    settings: Settings,
    queues: list[str] | None = None,
    *,
    reaper: bool = True,
) -> None:
    """Block running a worker until it is told to stop."""
    log_format = use_our_logging(settings)
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
    # Celery's banner is printed, not logged: on a terminal only, never among JSON lines.
    quiet = ["--quiet"] if log_format == "json" else []
    app.worker_main(
        [
            *quiet,
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
            settings.log_level,
        ]
    )
