"""Thin Celery tasks: they receive ids, and the runners re-read the rows and do the work."""

from __future__ import annotations

from celery import shared_task

from app.observability.logs import bind
from worker.context import current_context


@shared_task(name="training.run_job", ignore_result=True)
def run_job(job_id: str) -> str | None:
    """Train one attempt of a job (a duplicate or stale message exits at the claim)."""
    from worker.runner import JobRunner

    with bind(job_id=job_id):  # the runner adds the attempt and the organization
        return JobRunner(current_context(), job_id).run()


@shared_task(name="exports.run_export", ignore_result=True)
def run_export(export_id: str) -> str | None:
    """Build a merged model for an export."""
    from worker.exports import run_export as run

    with bind(export_id=export_id):  # the export's job and organization are added on claim
        return run(current_context(), export_id)


@shared_task(name="webhooks.deliver", ignore_result=True)
def deliver_webhook(delivery_id: str) -> str | None:
    """One attempt of a webhook delivery; a later one is the dispatcher's (worker/webhooks.py)."""
    from worker.webhooks import deliver

    context = current_context()
    return deliver(context.session_factory, context.settings, delivery_id)
