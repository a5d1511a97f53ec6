"""Tables. Every row a tenant can see carries organization_id; every query filters on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import AutoIncrementBigInt, Base, UTCDateTime, utcnow

# SQL NULL (not JSON null) for None, so `IS NULL` filters work on every dialect.
Json = JSON(none_as_null=True)


class Organization(Base):
    __tablename__ = "organization"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # sha256 hex of the whole key: the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class File(Base):
    __tablename__ = "file"
    __table_args__ = (Index("ix_file_org_created", "organization_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Generated from the ids, never from the client's filename.
    storage_key: Mapped[str] = mapped_column(String(255))
    stats: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Past it the file is neither listed nor usable, and the API's sweep deletes it (the
    # upload's expires_after); NULL: kept until deleted.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class Upload(Base):
    """A file arriving in parts (OpenAI's Uploads API); completing it creates the File."""

    __tablename__ = "upload"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    # The size the client announced: the parts must add up to it exactly.
    bytes: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(255))
    # pending -> completed | cancelled | expired
    status: Mapped[str] = mapped_column(String(16))
    # The created file's expires_after.seconds, if the client gave one.
    file_expires_after_s: Mapped[int | None] = mapped_column(Integer)
    file_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class UploadPart(Base):
    __tablename__ = "upload_part"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_org_created", "organization_id", "created_at", "id"),
        Index("ix_job_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    model: Mapped[str] = mapped_column(String(255))
    training_file_id: Mapped[str] = mapped_column(String(40))
    validation_file_id: Mapped[str | None] = mapped_column(String(40))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", Json)
    # W&B and MLflow runs the worker logs to (app.schemas.integrations), as requested.
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    # The resolved app.schemas.spec.ResolvedSpec: every "auto" already filled in.
    spec: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(32))
    # The Celery queue (GPU class) the job was routed to; the reaper publishes there again.
    queue: Mapped[str] = mapped_column(String(64), server_default="training")
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255))
    model_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict[str, Any] | None] = mapped_column(Json)
    result_files: Mapped[list[str]] = mapped_column(Json, default=list)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Claims so far (a resume or a re-queue after a lost worker each start one): the fence.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Workers lost while running it (lease expired): the budget max_attempts bounds.
    lost_workers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the job's task was last published (a new job is committed with the time it is
    # published at). NULL on a queued job: unpublished, for the reaper's next pass.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobEvent(Base):
    __tablename__ = "job_event"
    __table_args__ = (Index("ix_job_event_job_seq", "job_id", "seq"),)

    # A global sequence: orders events and serves as the SSE Last-Event-ID.
    seq: Mapped[int] = mapped_column(AutoIncrementBigInt, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    type: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Export(Base):
    """A merged model a worker builds; claimed, leased and recovered as a job is."""

    __tablename__ = "export"
    __table_args__ = (Index("ix_export_status", "status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    type: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[dict[str, Any] | None] = mapped_column(Json)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lost_workers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When its task was last published; NULL on a queued export: for the reaper's next pass.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("organization_id", "key"),)

    id: Mapped[int] = mapped_column(AutoIncrementBigInt, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the canonical request body: the same key with another body is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoint"
    __table_args__ = (
        Index("ix_webhook_endpoint_org_created", "organization_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(Json, default=list)
    description: Mapped[str] = mapped_column(String(512), default="")
    # The Standard Webhooks secret (`whsec_` + base64): kept, since every delivery is signed
    # with it, and shown to the tenant once, when the endpoint is created.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction of the change it
    announces and sent by a worker, retried until it succeeds or its window closes."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_endpoint_created", "endpoint_id", "created_at", "id"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )

    # The `webhook-id` header: the same on every attempt, so receivers can deduplicate.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    # The exact body signed and sent, the same bytes on every attempt.
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a worker may send it next; pushed forward while one is sending it. NULL once done.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempt"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[int] = mapped_column(AutoIncrementBigInt, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_delivery.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(500))
    # The start of the receiver's answer, never more (RESPONSE_PREFIX_BYTES).
    response_body: Mapped[str | None] = mapped_column(String(512))
