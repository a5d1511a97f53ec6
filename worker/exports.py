"""ExportRunner: merge a succeeded job's adapter into its 16-bit base, in one place.

The merge works on local directories: the adapter is pulled from storage into the worker's
workspace and the merged model pushed back (both no-ops on the data dir).
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import Export, Job
from app.services.webhooks import record_export_event
from worker.context import WorkerContext
from worker.webhooks import announce

log = logging.getLogger(__name__)


def _set_export(context: WorkerContext, export_id: str, from_status: str, **values: object) -> bool:
    """A compare-and-set of the export's status; a final one records its webhooks with it."""
    with context.session_factory() as session:
        result = session.execute(
            update(Export)
            .where(Export.id == export_id, Export.status == from_status)
            .values(**values)
        )
        changed = result.rowcount == 1  # type: ignore[attr-defined]
        deliveries: list[str] = []
        if changed and isinstance(values.get("status"), str):
            export = session.get_one(Export, export_id)
            deliveries = record_export_event(
                session, export.id, export.job_id, export.organization_id, str(values["status"])
            )
        session.commit()
    announce(context.enqueuer, context.settings, deliveries)
    return changed


def run_export(context: WorkerContext, export_id: str) -> str | None:
    """queued -> running -> succeeded | failed; a duplicate message finds it claimed and exits."""
    if not _set_export(context, export_id, "queued", status="running"):
        return None
    settings, storage = context.settings, context.storage
    output_key = f"exports/{export_id}"
    output = storage.workspace(output_key)
    # On the data dir the adapter is read in place; from a bucket, into a copy of our own.
    adapter_copy = f"{output_key}.adapter"
    try:
        from worker.training.export import export_merged

        with context.session_factory() as session:
            export = session.get_one(Export, export_id)
            job = session.get_one(Job, export.job_id)
            base = settings.catalog()[job.model]
        adapter_key = f"jobs/{job.id}/adapter"
        adapter_dir = storage.local_path(adapter_key)
        if adapter_dir is None:
            adapter_dir = storage.workspace(adapter_copy)
            storage.pull(adapter_key, adapter_dir)
        result = export_merged(base, adapter_dir, output, settings.models_dir, dtype=export.dtype)
        storage.push(output, output_key)
        details = {
            "max_abs_logit_diff": result.max_abs_logit_diff,
            "files": result.files,
            "bytes": sum(p.stat().st_size for p in output.iterdir() if p.is_file()),
        }
    except Exception:
        log.exception("export %s failed", export_id)
        error = {
            "code": "internal_error",
            "message": "the export failed on our side",
            "param": None,
        }
        _set_export(
            context, export_id, "running", status="failed", error=error, finished_at=utcnow()
        )
        return "failed"
    finally:
        storage.release(output_key)
        storage.release(adapter_copy)
    _set_export(
        context,
        export_id,
        "running",
        status="succeeded",
        finished_at=utcnow(),
        storage_key=output_key,
        details=details,
    )
    return "succeeded"
