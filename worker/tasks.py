"""Thin Celery tasks: they receive ids, and the runners re-read the rows and do the work."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from celery import shared_task, signals

from app.observability.logs import bind
from worker.context import current_context

# The log field each task's id argument fills, for every record from the moment the worker
# starts the task until it has logged its outcome (Celery's "succeeded in 12.3s" line too).
# The runners add the rest: a job's attempt and organization, an export's job.
TASK_LOG_FIELDS = {"training.run_job": "job_id", "exports.run_export": "export_id"}
_bound: dict[str, ExitStack] = {}


@signals.task_prerun.connect
def bind_task_fields(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    field = TASK_LOG_FIELDS.get(task.name)
    if field and args:
        # The solo pool runs prerun, the task and postrun in one thread: one context.
        stack = _bound[task_id] = ExitStack()
        stack.enter_context(bind(**{field: args[0]}))


@signals.task_postrun.connect
def unbind_task_fields(task_id: str, **_: Any) -> None:
    stack = _bound.pop(task_id, None)
    if stack is not None:
        stack.close()


@shared_task(name="training.run_job", ignore_result=True)
def run_job(job_id: str) -> str | None:
    """Train one attempt of a job (a duplicate or stale message exits at the claim)."""
    from worker.runner import JobRunner

    return JobRunner(current_context(), job_id).run()


@shared_task(name="exports.run_export", ignore_result=True)
def run_export(export_id: str) -> str | None:
    """Build a merged model for an export."""
    from worker.exports import run_export as run

    return run(current_context(), export_id)


@shared_task(name="webhooks.deliver", ignore_result=True)
def deliver_webhook(delivery_id: str) -> str | None:
    """One attempt of a webhook delivery; a later one is the dispatcher's (worker/webhooks.py)."""
    from worker.webhooks import deliver

    context = current_context()
    return deliver(context.session_factory, context.settings, delivery_id)
