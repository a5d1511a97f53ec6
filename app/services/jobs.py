"""Fine-tuning jobs: create (validate, resolve, commit, enqueue), read, cancel, pause, resume."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Row,
    Select,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from app.config import Settings
from app.db.base import new_id, utcnow
from app.db.models import File, IdempotencyKey, Job, Organization
from app.db.session import autocommit_next
from app.errors import (
    IdempotencyConflict,
    InvalidJobState,
    InvalidRequest,
    JobNotFound,
)
from app.queue import TASK_RUN_JOB, Enqueuer, try_send
from app.schemas.jobs import JobCreate, MetadataFilter
from app.schemas.spec import MethodType, ResolvedSpec, resolve_spec
from app.services.capacity import route
from app.services.events import add_event, insert_messages
from app.services.integrations import stored_integrations
from app.services.model_configs import check_renders_tools, check_target_modules
from app.services.pagination import page_by_created
from app.services.parents import child_lora, child_quantization, find_parent, model_not_found
from app.services.quotas import check_job_slot
from app.services.transitions import compare_and_set
from app.services.webhooks import record_job_event

log = logging.getLogger(__name__)

# A concurrent worker can move a job between our read and our write; retry that many times.
CAS_ATTEMPTS = 3


def name_suffix(suffix: str | None) -> str:
    """The suffix as a model name carries it: letters, digits, `.`, `_` and `-` kept, any other
    run of characters (`:` the name's separator, `/`, spaces...) one `-`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", suffix or "").strip("-")


def fine_tuned_model_name(base: str, organization: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:{base}:{org}:{suffix}:{job short id}."""
    org_slug = re.sub(r"[^a-z0-9-]+", "-", organization.lower()).strip("-") or "org"
    return f"ft:{base}:{org_slug}:{name_suffix(suffix)}:{job_id.removeprefix('ftjob-')[:8]}"


@cache
def _tenant_file_query() -> Select[Any]:
    """Built once: what creating a job needs of the tenant's live file, as a plain row."""
    return select(File.purpose, File.stats).where(
        File.id == bindparam("file_id"),
        File.organization_id == bindparam("organization_id"),
        or_(File.expires_at.is_(None), File.expires_at > bindparam("now")),
    )


def _tenant_file(session: Session, organization_id: str, file_id: str, param: str) -> Row[Any]:
    params = {"file_id": file_id, "organization_id": organization_id, "now": utcnow()}
    record = session.connection().execute(_tenant_file_query(), params).first()
    if record is None:
        raise InvalidRequest(f"no file with id {file_id!r}", param=param, code="file_not_found")
    if record.purpose != "fine-tune":
        raise InvalidRequest(
            f"file {file_id!r} has purpose {record.purpose!r}; a job trains only on files "
            "uploaded with purpose 'fine-tune', which are validated as training data",
            param=param,
            code="invalid_file_purpose",
        )
    return record


# Which dataset format each method trains on.
METHOD_FORMATS = {"supervised": "chat, prompt_completion or text", "dpo": "preference"}


def check_file_format(stats: dict[str, Any], method: MethodType, param: str) -> None:
    """400 invalid_file_format when the file's format is not the one the method trains on:
    DPO learns from preference pairs only, supervised fine-tuning from anything else."""
    is_preference = stats.get("format") == "preference"
    if is_preference == (method == "dpo"):
        return
    raise InvalidRequest(
        f"the {param} is in the {stats.get('format')} format, but a {method} job trains on "
        f"{METHOD_FORMATS[method]} files (DPO, method.type 'dpo', takes preference files, "
        "whose lines have input, preferred_output and non_preferred_output)",
        param=param,
        code="invalid_file_format",
    )


def _request_hash(body: JobCreate) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _replay(session: Session, organization_id: str, key: str, body: JobCreate) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if any."""
    record = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.organization_id == organization_id, IdempotencyKey.key == key
        )
    )
    if record is None:
        return None
    if record.request_hash != _request_hash(body):
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body",
            param="Idempotency-Key",
        )
    return session.get(Job, record.job_id)


def resolve_request(
    session: Session, settings: Settings, organization_id: str, body: JobCreate
) -> ResolvedSpec:
    """Check the model (a catalog base, or the tenant's fine-tuned model or checkpoint to
    continue), the tenant's files and the LoRA targets, then fill in every "auto" (creates
    nothing)."""
    catalog = settings.catalog()
    parent = None if body.model in catalog else find_parent(session, organization_id, body.model)
    entry = catalog.get(parent.spec.model if parent else body.model)
    if entry is None:
        raise model_not_found(body.model)
    method = body.method.type if body.method else "supervised"
    training = _tenant_file(session, organization_id, body.training_file, "training_file")
    check_file_format(training.stats, method, "training_file")
    check_renders_tools(entry, int(training.stats.get("tool_examples", 0)), "training_file")
    if body.validation_file is not None:
        validation = _tenant_file(session, organization_id, body.validation_file, "validation_file")
        check_file_format(validation.stats, method, "validation_file")
        check_renders_tools(entry, int(validation.stats.get("tool_examples", 0)), "validation_file")
    try:
        hyperparameters = body.requested_hyperparameters()
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="hyperparameters") from exc
    spec = resolve_spec(
        model=entry.id,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        n_train_examples=int(training.stats.get("examples", 0)),  # for DPO, its pairs
        hyperparameters=hyperparameters,
        lora=child_lora(body, parent) if parent else body.lora,
        quantization=child_quantization(body, parent) if parent else body.quantization,
        training=body.training,
        parent=parent.model if parent else None,
        method=method,
    )
    check_target_modules(entry, spec.lora.target_modules)
    return spec


def _new_job(session: Session, settings: Settings, organization_id: str, body: JobCreate) -> Job:
    """The job to insert, with every column that is not NULL set (`_insert_job` writes them)."""
    spec = resolve_request(session, settings, organization_id, body)
    now = utcnow()
    return Job(
        id=new_id("ftjob"),
        queue=route(settings, spec),
        organization_id=organization_id,
        model=spec.model,  # the base: a fine-tuned parent is named in spec.parent
        training_file_id=body.training_file,
        validation_file_id=body.validation_file,
        suffix=body.suffix,
        seed=spec.seed,
        metadata_=body.metadata,
        integrations=stored_integrations(settings, body.integrations),
        spec=spec.model_dump(mode="json"),
        status="queued",
        result_files=[],
        attempt=0,
        lost_workers=0,
        cancel_requested=False,
        pause_requested=False,
        created_at=now,
        # Written with the job, which is published right after: a publish that succeeds then
        # writes nothing. One that fails clears it (`publish_created`) and the reaper's next
        # pass publishes the job; a process lost before publishing leaves it set, and the
        # reaper publishes the job after requeue_after_s, as it does a message the broker lost.
        enqueued_at=now,
    )


@cache
def _job_columns() -> tuple[tuple[str, str], ...]:
    """(column, attribute) for each of the job's columns."""
    return tuple((column.key, key) for key, column in Job.__mapper__.columns.items())


@cache
def _job_insert() -> Insert:
    return insert(Job)


def _insert_job(session: Session, job: Job) -> None:
    """INSERT a new job as one Core statement: what it has set, NULL for the rest.

    The session's unit of work, for this one row, cost POST job 0.55M of its 7.4M instructions.
    The job stays out of the session, as the object the response is made from.
    """
    values = {column: getattr(job, key) for column, key in _job_columns()}
    session.connection().execute(_job_insert(), values)


def create_job(
    session: Session,
    settings: Settings,
    *,
    organization_id: str,
    body: JobCreate,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate and resolve the request, then commit the job; returns (job, created).

    `created` is False when an earlier request with this Idempotency-Key made the job: only
    a new job is then published (`publish_created`).
    """
    if idempotency_key is not None:
        replayed = _replay(session, organization_id, idempotency_key, body)
        if replayed is not None:
            return replayed, False
    job = _new_job(session, settings, organization_id, body)
    check_job_slot(session, settings, organization_id)
    _insert_job(session, job)  # the job row first: events and the idempotency key reference it
    insert_messages(
        session, job, [f"Created fine-tuning job: {job.id}", "Validating training file: ok"]
    )
    if idempotency_key is not None:
        session.add(
            IdempotencyKey(
                organization_id=organization_id,
                key=idempotency_key,
                request_hash=_request_hash(body),
                job_id=job.id,
            )
        )
    try:
        session.commit()
    except IntegrityError:
        # Two requests with one key raced; the loser answers with the winner's job.
        session.rollback()
        if idempotency_key is None:
            raise
        replayed = _replay(session, organization_id, idempotency_key, body)
        if replayed is None:
            raise
        return replayed, False
    return job, True


def publish(session: Session, settings: Settings, enqueuer: Enqueuer, job: Job) -> bool:
    """Ring the bell for a committed queued job; record when it was sent."""
    if not try_send(enqueuer, TASK_RUN_JOB, [job.id], job.queue):
        return False
    sent_at = utcnow()
    autocommit_next(session)  # one UPDATE: no BEGIN and COMMIT round trips around it
    recorded = compare_and_set(session, job.id, from_statuses={"queued"}, enqueued_at=sent_at)
    session.commit()
    if recorded:
        # Still queued when the row was written: the loaded job lacks only this value.
        set_committed_value(job, "enqueued_at", sent_at)
    else:
        session.refresh(job)  # a worker moved it on already
    return True


def publish_created(
    factory: sessionmaker[Session], enqueuer: Enqueuer, job_id: str, queue: str
) -> None:
    """Publish a job that `create_job` committed, after the response (the publishing thread).

    If the broker cannot take it, clear `enqueued_at`, which the job was committed with: the
    reaper's next pass then publishes it.
    """
    if try_send(enqueuer, TASK_RUN_JOB, [job_id], queue):
        return
    try:
        with factory() as session:
            compare_and_set(session, job_id, from_statuses={"queued"}, enqueued_at=None)
            session.commit()
    except Exception:
        log.warning(
            "could not mark job %s unpublished; the reaper publishes it after requeue_after_s",
            job_id,
            exc_info=True,
        )


@cache
def _tenant_job() -> Select[Job]:
    """Built once: the hottest query of the API is then only bound and executed."""
    return select(Job).where(
        Job.id == bindparam("job_id"), Job.organization_id == bindparam("organization_id")
    )


@cache
def _tenant_job_columns() -> Select[Any]:
    """Built once: every column of the tenant's job, named as the model's attributes are."""
    columns = [column.label(key) for key, column in Job.__mapper__.columns.items()]
    return select(*columns).where(
        Job.id == bindparam("job_id"), Job.organization_id == bindparam("organization_id")
    )


def get_job_row(connection: Connection, organization_id: str, job_id: str) -> Row[Any]:
    """The tenant's job as a plain row, for a read that only presents it; or 404.

    A row on a connection skips the ORM's loading and a session's bookkeeping, which GET job,
    the busiest route, would otherwise pay on every request.
    """
    params = {"job_id": job_id, "organization_id": organization_id}
    row = connection.execute(_tenant_job_columns(), params).first()
    if row is None:
        raise _job_not_found(job_id)
    return row


def get_job(session: Session, organization_id: str, job_id: str) -> Job:
    """The tenant's job, or 404 (another tenant's id included)."""
    job = session.scalar(_tenant_job(), {"job_id": job_id, "organization_id": organization_id})
    if job is None:
        raise _job_not_found(job_id)
    return job


def require_job(session: Session | Connection, organization_id: str, job_id: str) -> None:
    """404 unless the tenant has this job; for reads that need only its id."""
    found = session.scalar(
        select(Job.id).where(Job.id == job_id, Job.organization_id == organization_id)
    )
    if found is None:
        raise _job_not_found(job_id)


def _job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")


def list_jobs(
    session: Session,
    organization_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: MetadataFilter | None = None,
) -> tuple[list[Job], bool]:
    """One page of the tenant's jobs, newest first, those matching `metadata` only."""
    stmt = select(Job).where(Job.organization_id == organization_id)
    if metadata is not None:
        if metadata.without_metadata:
            stmt = stmt.where(Job.metadata_.is_(None))
        dialect = session.get_bind().dialect.name
        for key, value in metadata.pairs.items():
            stmt = stmt.where(_metadata_has(dialect, key, value))
    return page_by_created(
        session, Job, stmt, organization_id=organization_id, after=after, limit=limit
    )


def _metadata_has(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """The job's metadata maps `key` to `value`, through the key/value rows of the JSON object:
    SQLite's JSON paths cannot spell every key (a `"` in it), a bound key always can."""
    each = func.json_each_text if dialect == "postgresql" else func.json_each
    pairs = each(Job.metadata_).table_valued("key", "value")
    return exists().where(pairs.c.key == key, pairs.c.value == value)


def _change(session: Session, job: Job, action: str, plan: dict[str, dict[str, object]]) -> Job:
    """Apply the first entry of `plan` (status -> new values) that matches the job's status."""
    for _ in range(CAS_ATTEMPTS):
        values = plan.get(job.status)
        if values is None:
            raise InvalidJobState(
                f"cannot {action} a job that is {job.status}", param="fine_tuning_job_id"
            )
        if compare_and_set(session, job.id, from_statuses={job.status}, **values):  # type: ignore[arg-type]
            to_status = values.get("to_status")
            if isinstance(to_status, str):  # its webhooks, in the change's transaction
                record_job_event(session, job.id, job.organization_id, to_status)
            session.commit()
            session.refresh(job)
            return job
        session.rollback()
        session.refresh(job)
    raise InvalidJobState(f"the job changed state while trying to {action} it; try again")


def cancel_job(session: Session, job: Job) -> Job:
    """Queued and paused jobs end at once; a running job stops within one training step."""
    if job.status == "cancelled":
        return job
    now = utcnow()
    stop_now: dict[str, object] = {"to_status": "cancelled", "finished_at": now}
    job = _change(
        session,
        job,
        "cancel",
        {
            "validating_files": stop_now,
            "queued": stop_now,
            "paused": stop_now,
            "running": {"cancel_requested": True},
        },
    )
    if job.status == "cancelled":
        add_event(session, job, "Fine-tuning job cancelled")
    else:
        add_event(session, job, "Cancellation requested; stopping after the current step")
    session.commit()
    return job


def pause_job(session: Session, job: Job) -> Job:
    """A queued job is held back; a running one checkpoints and then pauses."""
    job = _change(
        session,
        job,
        "pause",
        {
            "queued": {"to_status": "paused"},
            "running": {"pause_requested": True},
        },
    )
    add_event(session, job, "Pause requested" if job.status == "running" else "Job paused")
    session.commit()
    return job


def resume_job(session: Session, settings: Settings, enqueuer: Enqueuer, job: Job) -> Job:
    """A paused job goes back to the queue and continues from its newest checkpoint."""
    if job.status == "paused":
        check_job_slot(session, settings, job.organization_id)
    job = _change(
        session,
        job,
        "resume",
        {
            "paused": {"to_status": "queued", "pause_requested": False, "enqueued_at": None},
        },
    )
    add_event(session, job, "Job resumed; queued")
    session.commit()
    publish(session, settings, enqueuer, job)
    return job


def organization_name(session: Session, organization_id: str) -> str:
    organization = session.get(Organization, organization_id)
    return organization.name if organization else organization_id
