"""JobRunner: start -> run -> finish or fail, in one place (the Celery task only calls it).

It turns the engine's hooks into rows: metrics events in batches, checkpoint rows, the
cancel/pause flags read every step, and the final status, every write fenced on the lease.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import Checkpoint, File, Job
from app.observability.logs import annotate
from app.schemas.spec import ResolvedSpec
from app.services.capacity import estimated_bytes
from app.services.events import add_event
from app.services.jobs import fine_tuned_model_name, organization_name
from app.services.parents import ADAPTER_WEIGHTS, parent_adapter_key
from app.services.transitions import compare_and_set
from app.services.webhooks import record_job_event
from worker.context import WorkerContext
from worker.failures import (
    UserError,
    disk_full_error,
    exhausted_memory,
    free_disk_bytes,
    is_disk_full,
    out_of_memory_error,
    user_error,
)
from worker.integrations import Trackers, flatten
from worker.lifecycle import Claim, Heartbeat, claim, finish
from worker.metrics import StepTimer, attempt_timer
from worker.workspace import JobWorkspace

if TYPE_CHECKING:
    from worker.training.config import TrainingConfig
    from worker.training.metrics import StopReason

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another attempt owns the job now: stop and write nothing more."""


class JobRunner:
    """Runs one attempt of one job."""

    def __init__(self, context: WorkerContext, job_id: str) -> None:
        self.context = context
        self.settings = context.settings
        self.job_id = job_id
        self.claim: Claim | None = None
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.model_name = ""
        self.workspace = JobWorkspace(context.storage, job_id)
        self.step_timer = StepTimer()
        self.trackers = Trackers(lambda message: self._event(message, level="warn"))
        self.device = "cpu"

    def run(self) -> str | None:
        """Claim and train; returns the final status written, or None if not ours."""
        if self.context.stopping.is_set():
            # Celery can take one more message after a stop request: leave its job to others.
            log.info("job %s: this worker is stopping; leaving it queued", self.job_id)
            self._leave_queued()
            return None
        if not self._fits_this_worker():
            return None
        with self.context.session_factory() as session:
            self.claim = claim(
                session, self.job_id, self.context.identity, self.settings.lease_seconds
            )
            if self.claim is None:
                log.info("job %s is not queued (duplicate or stale message); skipping", self.job_id)
                return None
        annotate(attempt=self.claim.attempt)
        heartbeat = Heartbeat(
            self.context.session_factory,
            self.claim,
            self.settings.lease_seconds,
            self.settings.heartbeat_seconds,
        )
        with heartbeat, attempt_timer() as timed:
            self.heartbeat = heartbeat
            try:
                status = self._train()
            except LeaseLost:
                # The next attempt may be running on this machine, in this workspace.
                log.warning("job %s attempt %s lost its lease", self.job_id, self.claim.attempt)
                return None
            except Exception as exc:
                status = self._fail_from(exc)
            self.workspace.release()
            self.trackers.finish(status or "lost")
            timed.status = status or "lost"
            return status

    # -- the story -------------------------------------------------------------------------

    def _train(self) -> str | None:
        from worker.training.checkpoint import latest_complete_checkpoint
        from worker.training.config import TrainingConfig, TrainingPaths
        from worker.training.engine import run_training
        from worker.training.metrics import TrainingHooks

        job, train_key, validation_key, organization = self._load()
        spec = ResolvedSpec.model_validate(job.spec)
        self.model_name = fine_tuned_model_name(job.model, organization, job.suffix, job.id)
        config = TrainingConfig.from_spec(spec, self.settings.catalog()[job.model])
        workspace = self.workspace
        workspace.restore()
        paths = TrainingPaths(
            train_file=workspace.dataset(train_key),
            validation_file=workspace.dataset(validation_key) if validation_key else None,
            output_dir=workspace.output_dir,
            models_dir=self.settings.models_dir,
            parent_adapter=self._parent_adapter(spec),
        )
        resume_from = latest_complete_checkpoint(paths.checkpoints_dir)
        self.device = config.device
        attempt = self.claim.attempt if self.claim else 0
        self._event(
            f"Fine-tuning job started (attempt {attempt}) on {config.device}"
            if resume_from is None
            else f"Attempt {attempt} resuming from checkpoint {resume_from.name}"
        )
        self._start_trackers(job, config, attempt)
        hooks = TrainingHooks(
            on_metrics=self._on_metrics,
            on_message=self._event,
            on_checkpoint=self._on_checkpoint,
            should_stop=self._should_stop,
        )
        result = run_training(config, paths, hooks)
        self._flush(force=True)
        if result.status == "stopped":
            return self._stopped(result.stop_reason, result.global_step, result.checkpoint_dir)
        self._check_lease()
        workspace.save_final(paths.adapter_dir)
        self.trackers.log_adapter(paths.adapter_dir)
        return self._succeeded(job, result.trained_tokens, paths.results_csv)

    def _load(self) -> tuple[Job, str, str | None, str]:
        """The job, its training and validation files' storage keys, its organization."""
        with self.context.session_factory() as session:
            job = session.get_one(Job, self.job_id)
            annotate(organization=job.organization_id)
            files = {
                f.id: f
                for f in session.scalars(
                    select(File).where(
                        File.id.in_([job.training_file_id, job.validation_file_id or ""])
                    )
                )
            }
            training = _dataset_key(files, job.training_file_id, "training_file")
            validation = (
                _dataset_key(files, job.validation_file_id, "validation_file")
                if job.validation_file_id
                else None
            )
            return (
                job,
                training,
                validation,
                organization_name(session, job.organization_id),
            )

    def _parent_adapter(self, spec: ResolvedSpec) -> Path | None:
        """A local copy of the fine-tuned parent's adapter weights, when the job has one."""
        if spec.parent is None:
            return None
        parent = spec.parent
        with self.context.session_factory() as session:
            key = parent_adapter_key(session, self.context.storage, parent.job_id, parent.step)
        try:
            return self.workspace.dataset(f"{key}/{ADAPTER_WEIGHTS}")
        except FileNotFoundError as exc:
            raise UserError(
                "parent_model_unavailable",
                f"the adapter of {parent.model!r} is no longer stored",
                "model",
            ) from exc

    def _fits_this_worker(self) -> bool:
        """Whether this device can hold the job; a job too big is left for a larger worker."""
        capacity = self.context.device_memory_bytes
        if capacity is None:
            return True
        with self.context.session_factory() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.status != "queued":
                return True  # the claim decides
            needed = estimated_bytes(self.settings, ResolvedSpec.model_validate(job.spec))
            if needed is None or needed <= capacity:
                return True
        self._leave_queued()
        log.warning(
            "job %s needs about %.2f GiB; this worker has %.2f GiB: leaving it queued",
            self.job_id,
            needed / 2**30,
            capacity / 2**30,
        )
        return False

    def _leave_queued(self) -> None:
        """Mark a queued job unpublished: its message is consumed, and a reaper's next pass
        publishes it again, to the job's queue, for another worker."""
        with self.context.session_factory() as session:
            compare_and_set(session, self.job_id, from_statuses={"queued"}, enqueued_at=None)
            session.commit()

    # -- hooks -----------------------------------------------------------------------------

    def _check_lease(self) -> None:
        if self.heartbeat.lost.is_set():
            raise LeaseLost

    def _should_stop(self) -> StopReason | None:
        self._check_lease()
        with self.context.session_factory() as session:
            row = session.execute(
                select(
                    Job.cancel_requested, Job.pause_requested, Job.attempt, Job.lease_owner
                ).where(Job.id == self.job_id)
            ).one()
        assert self.claim is not None
        if (row.attempt, row.lease_owner) != (self.claim.attempt, self.claim.owner):
            raise LeaseLost
        if row.cancel_requested:
            return "cancel"
        if row.pause_requested:
            return "pause"
        if self.context.stopping.is_set():
            return "shutdown"
        return None

    def _on_metrics(self, metrics: Any) -> None:
        self.step_timer.observe(metrics.tokens_per_second, self._peak_memory())
        data = metrics.as_dict()
        self.trackers.log_metrics(metrics.step, data)
        message = (
            f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
        )
        if metrics.valid_loss is not None:
            message += f", validation loss={metrics.valid_loss:.4f}"
        if metrics.train_reward_margin is not None:
            message += f", reward margin={metrics.train_reward_margin:.4f}"
        if metrics.valid_preference_accuracy is not None:
            message += f", validation preference accuracy={metrics.valid_preference_accuracy:.2f}"
        self.pending.append({"message": message, "data": data})
        self._flush(force=False)

    def _on_checkpoint(self, step: int, path: Path, metrics: Any) -> None:
        self._flush(force=True)
        self._check_lease()
        # Stored before its row is written: a listed checkpoint can always be downloaded.
        key = self.workspace.save_checkpoint(path)
        # OpenAI's checkpoint metrics: valid_* and full_valid_* from this checkpoint's pass over
        # the whole validation set (None without a validation file).
        values = {
            "step": step,
            "train_loss": metrics.train_loss,
            "train_mean_token_accuracy": metrics.train_mean_token_accuracy,
            "valid_loss": metrics.valid_loss,
            "valid_mean_token_accuracy": metrics.valid_mean_token_accuracy,
            "full_valid_loss": metrics.full_valid_loss,
            "full_valid_mean_token_accuracy": metrics.full_valid_mean_token_accuracy,
        }
        if metrics.train_reward_margin is not None:  # a DPO job's
            values["full_valid_reward_margin"] = metrics.full_valid_reward_margin
            values["full_valid_preference_accuracy"] = metrics.full_valid_preference_accuracy
        with self._fenced() as (session, job):
            existing = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == job.id, Checkpoint.step_number == step
                )
            )
            if existing is None:
                session.add(
                    Checkpoint(
                        id=new_id("ftckpt"),
                        job_id=job.id,
                        organization_id=job.organization_id,
                        step_number=step,
                        metrics=values,
                        storage_key=key,
                        fine_tuned_model_checkpoint=f"{self.model_name}:ckpt-step-{step}",
                    )
                )
            else:
                existing.metrics, existing.storage_key = values, key
            add_event(session, job, f"Checkpoint saved at step {step}")

    # -- writes ----------------------------------------------------------------------------

    def _flush(self, *, force: bool) -> None:
        """Write buffered metrics events in one transaction, every metrics_flush_s."""
        if not self.pending or (
            not force and time.monotonic() - self.last_flush < self.settings.metrics_flush_s
        ):
            return
        pending, self.pending = self.pending, []
        eta = pending[-1]["data"].get("eta_seconds")
        with self._fenced(estimated_finish=utcnow() + _seconds(eta) if eta else None) as (
            session,
            job,
        ):
            for item in pending:
                add_event(session, job, item["message"], type="metrics", data=item["data"])
        self.last_flush = time.monotonic()

    def _fenced(self, **job_values: Any) -> _FencedWrite:
        assert self.claim is not None
        return _FencedWrite(self.context.session_factory(), self.claim, job_values)

    def _event(self, message: str, level: str = "info") -> None:
        with self._fenced() as (session, job):
            add_event(session, job, message, level=level)

    def _stopped(self, reason: str | None, step: int, checkpoint: Path | None) -> str | None:
        """Write the status a stop leads to: paused, cancelled, or queued again (shutdown)."""
        assert self.claim is not None
        values: dict[str, Any]
        if reason == "pause":
            status, values = "paused", {"pause_requested": False}
            message = f"Job paused at step {step}; resume continues from its checkpoint"
        elif reason == "shutdown":
            # Released through `finish`, not left to the lease: a planned stop is no crash, and
            # a reaper publishes the job again at its next pass (enqueued_at NULL).
            status, values = "queued", {"enqueued_at": None}
            message = handed_back_message(step, checkpoint)
        else:
            status, values = "cancelled", {"finished_at": utcnow()}
            message = f"Fine-tuning job cancelled at step {step}"
        with self.context.session_factory() as session:
            job = session.get_one(Job, self.job_id)
            if not finish(session, self.claim, status, **values):
                return None
            add_event(session, job, message)
            deliveries = record_job_event(session, job.id, job.organization_id, status)
            session.commit()
            self._announce(deliveries)
            return status

    def _succeeded(self, job: Job, trained_tokens: int, results_csv: Path) -> str | None:
        assert self.claim is not None
        with self.context.session_factory() as session:
            result_file = self._register_results(session, job, results_csv)
            ok = finish(
                session,
                self.claim,
                "succeeded",
                finished_at=utcnow(),
                fine_tuned_model=self.model_name,
                trained_tokens=trained_tokens,
                result_files=[result_file.id],
                estimated_finish=None,
            )
            if not ok:
                self.context.storage.delete(result_file.storage_key)
                return None
            add_event(session, job, f"New fine-tuned model created: {self.model_name}")
            add_event(session, job, "The job has successfully completed")
            deliveries = record_job_event(session, job.id, job.organization_id, "succeeded")
            session.commit()
            self._announce(deliveries)
            return "succeeded"

    def _register_results(self, session: Session, job: Job, results_csv: Path) -> File:
        """results.csv becomes a file of purpose fine-tune-results, readable via /v1/files."""
        file_id = new_id("file")
        key = f"files/{job.organization_id}/{file_id}"
        storage = self.context.storage
        storage.put_file(results_csv, key)
        record = File(
            id=file_id,
            organization_id=job.organization_id,
            filename="results.csv",
            purpose="fine-tune-results",
            bytes=storage.size(key),
            sha256="",
            storage_key=key,
            stats={},
        )
        session.add(record)
        return record

    def _fail_from(self, exc: Exception) -> str | None:
        error = user_error(exc) or self._resource_error(exc)
        if error is None:
            log.exception("job %s failed with an internal error", self.job_id)
            error = {
                "code": "internal_error",
                "param": None,
                "message": "the job failed because of an error on our side",
            }
        assert self.claim is not None
        with self.context.session_factory() as session:
            job = session.get_one(Job, self.job_id)
            if not finish(session, self.claim, "failed", finished_at=utcnow(), error=error):
                return None
            add_event(session, job, f"Fine-tuning job failed: {error['message']}", level="error")
            deliveries = record_job_event(session, job.id, job.organization_id, "failed")
            session.commit()
            self._announce(deliveries)
            return "failed"

    def _start_trackers(self, job: Job, config: TrainingConfig, attempt: int) -> None:
        """The job's W&B and MLflow runs, with the resolved config as their params."""
        params = {
            "model": job.model,
            "device": config.device,
            "compute_dtype": config.compute_dtype,
            **flatten(config.spec.model_dump(mode="json")),
        }
        tags = {"loraforge.job_id": job.id, "loraforge.attempt": str(attempt)}
        self.trackers.start(job.integrations, self.settings, params, tags)

    def _peak_memory(self) -> int:
        from worker.training.engine import peak_memory_bytes

        return peak_memory_bytes(self.device)

    def _announce(self, delivery_ids: list[str]) -> None:
        from worker.webhooks import announce

        announce(self.context.enqueuer, self.settings, delivery_ids)

    def _resource_error(self, exc: Exception) -> dict[str, Any] | None:
        """Disk or memory this worker ran out of, named for the user and logged for us."""
        if is_disk_full(exc):
            error = disk_full_error(free_disk_bytes(self.workspace.output_dir))
        elif (memory := exhausted_memory(exc)) is not None:
            error = out_of_memory_error(memory, self._estimated_bytes())
        else:
            return None
        log.warning("job %s failed: %s", self.job_id, error["message"], exc_info=exc)
        return error

    def _estimated_bytes(self) -> int | None:
        """The job's memory estimate, as the API made it; None when the shape is unknown."""
        with self.context.session_factory() as session:
            spec = session.scalar(select(Job.spec).where(Job.id == self.job_id))
        try:
            return estimated_bytes(self.settings, ResolvedSpec.model_validate(spec))
        except (KeyError, ValueError):  # a model since removed from the catalog, an old spec
            return None


def handed_back_message(step: int, checkpoint: Path | None) -> str:
    """The event of a job its stopping worker queued again."""
    resume = f"resume from checkpoint {checkpoint.name}" if checkpoint else "start from step 0"
    return f"Worker stopped at step {step}; the job is queued again and will {resume}"


def _dataset_key(files: dict[str, File], file_id: str, param: str) -> str:
    """The storage key of a job's file, or the user's error: deleted, or expired (its
    expires_after passed) before the job ran."""
    record = files.get(file_id)
    what = param.replace("_", " ")
    if record is None:
        raise UserError(f"{param}_deleted", f"the {what} was deleted before the job ran", param)
    if record.expires_at is not None and record.expires_at <= utcnow():
        raise UserError(f"{param}_expired", f"the {what} expired before the job ran", param)
    return record.storage_key


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=float(value))


class _FencedWrite:
    """A transaction that commits only while the claim still owns the job."""

    def __init__(self, session: Session, claim: Claim, job_values: dict[str, Any]) -> None:
        self.session, self.claim = session, claim
        self.job_values = {k: v for k, v in job_values.items() if v is not None}

    def __enter__(self) -> tuple[Session, Job]:
        owned = compare_and_set(
            self.session,
            self.claim.row_id,
            from_statuses={"running"},
            where=self.claim.fence,
            **(self.job_values or {"lease_owner": self.claim.owner}),
        )
        if not owned:
            self.session.rollback()
            self.session.close()
            raise LeaseLost
        return self.session, self.session.get_one(Job, self.claim.row_id)

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()
