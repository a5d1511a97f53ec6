"""ExportRunner: merge a succeeded job's adapter into its 16-bit base, in one place.

An export is claimed and leased as a job is: a heartbeat extends the lease while the worker
merges, every write is fenced on the claim, and the reaper queues an export whose worker
was lost for another worker. The merge works on local directories: the adapter is pulled
from storage into the worker's workspace and the merged model pushed back (both no-ops on
the data dir).
"""

from __future__ import annotations

import logging
from typing import Any

from app.db.base import utcnow
from app.db.models import Export, Job
from app.observability.logs import annotate
from app.services.webhooks import record_export_event
from worker.context import WorkerContext
from worker.lifecycle import Claim, Heartbeat, claim, finish
from worker.webhooks import announce

log = logging.getLogger(__name__)

INTERNAL_ERROR = {
    "code": "internal_error",
    "message": "the export failed on our side",
    "param": None,
}


class LeaseLost(Exception):
    """Another attempt owns the export now: stop and write nothing more."""


def run_export(context: WorkerContext, export_id: str) -> str | None:
    """queued -> running -> succeeded | failed; None when the export is not (or no longer) ours."""
    settings = context.settings
    with context.session_factory() as session:
        claimed = claim(session, export_id, context.identity, settings.lease_seconds, table=Export)
    if claimed is None:
        log.info("export %s is not queued (duplicate or stale message); skipping", export_id)
        return None
    heartbeat = Heartbeat(
        context.session_factory, claimed, settings.lease_seconds, settings.heartbeat_seconds
    )
    with heartbeat:
        try:
            details = build_merged(context, export_id, heartbeat)
        except LeaseLost:
            log.warning("%s lost its lease; leaving the export to the next attempt", claimed)
            return None
        except Exception:
            log.exception("export %s failed", export_id)
            return _record(context, claimed, "failed", error=INTERNAL_ERROR)
        return _record(context, claimed, "succeeded", details=details)


def build_merged(context: WorkerContext, export_id: str, heartbeat: Heartbeat) -> dict[str, Any]:
    """Merge and store the export's model; what was measured, for the export's details."""
    from worker.training.export import export_merged

    settings, storage = context.settings, context.storage
    with context.session_factory() as session:
        export = session.get_one(Export, export_id)
        job = session.get_one(Job, export.job_id)
        annotate(job_id=job.id, organization=job.organization_id, attempt=export.attempt)
        base, dtype, output_key = settings.catalog()[job.model], export.dtype, export.storage_key
    output_key = output_key or f"exports/{export_id}"
    output = storage.workspace(output_key)
    # On the data dir the adapter is read in place; from a bucket, into a copy of our own.
    adapter_copy = f"{output_key}.adapter"
    try:
        adapter_key = f"jobs/{job.id}/adapter"
        adapter_dir = storage.local_path(adapter_key)
        if adapter_dir is None:
            adapter_dir = storage.workspace(adapter_copy)
            storage.pull(adapter_key, adapter_dir)
        result = export_merged(base, adapter_dir, output, settings.models_dir, dtype=dtype)
        # A stalled worker whose lease ran out stops here; the merge it wrote on the data
        # dir holds the same bytes as the next attempt's (same adapter, base and dtype).
        if heartbeat.lost.is_set():
            raise LeaseLost
        storage.push(output, output_key)
        return {
            "max_abs_logit_diff": result.max_abs_logit_diff,
            "files": result.files,
            "bytes": sum(p.stat().st_size for p in output.iterdir() if p.is_file()),
        }
    finally:
        storage.release(output_key)
        storage.release(adapter_copy)


def _record(context: WorkerContext, claimed: Claim, status: str, **values: Any) -> str | None:
    """The outcome, written only while the claim still holds the export, with the webhook
    deliveries it owes in the same transaction."""
    with context.session_factory() as session:
        if not finish(session, claimed, status, finished_at=utcnow(), **values):
            return None
        export = session.get_one(Export, claimed.row_id)
        deliveries = record_export_event(
            session, export.id, export.job_id, export.organization_id, status
        )
        session.commit()
    announce(context.enqueuer, context.settings, deliveries)
    return status
