"""One organization with one of everything a route can take an id of, written straight to the
database and the data dir (as the API and a worker would have), for fuzzing and leak scans."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.datasets import DatasetStats
from app.db.base import new_id, utcnow
from app.db.models import Export, File, Job, Upload, UploadPart, WebhookEndpoint
from app.schemas.spec import Hyperparameters, LoraSpec, QuantizationSpec, TrainingSpec, resolve_spec
from app.services.events import add_event
from app.services.files import storage_key
from app.services.uploads import UPLOAD_LIFETIME_S, parts_prefix
from app.services.webhook_signing import new_secret
from tests.artifacts import write_files
from tests.factories import add_checkpoint, add_export, chat_dataset

MODEL = "loraforge/tiny-random-llama"
# Server-owned values that must never appear in a response: seeded so a scan can look for them.
LEASE_OWNER = "worker-secret-host:4242:lease"
ADAPTER_FILES = {
    "adapter_config.json": b'{"r": 16, "lora_alpha": 32, "peft_type": "LORA"}',
    "adapter_model.safetensors": os.urandom(2048),
    "README.md": b"# LoRA adapter\n",
}
MERGED_FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(2048)}


@dataclass(frozen=True)
class Seeded:
    organization_id: str
    file_id: str
    succeeded_job_id: str
    queued_job_id: str
    paused_job_id: str
    running_job_id: str
    checkpoint_id: str
    export_id: str
    queued_export_id: str
    model: str
    upload_id: str  # every part received: completing it with upload_part_ids succeeds
    upload_part_ids: tuple[str, ...]
    partial_upload_id: str  # half of its bytes received: room for more parts
    webhook_id: str

    @property
    def terminal_job_id(self) -> str:
        """A job whose event stream ends by itself."""
        return self.succeeded_job_id

    def path_ids(self) -> list[dict[str, str]]:
        """Coherent path parameters that name existing objects (a checkpoint with its job)."""
        done = self.succeeded_job_id
        return [
            {"file_id": self.file_id},
            {"fine_tuning_job_id": done, "checkpoint_id": self.checkpoint_id},
            {"fine_tuning_job_id": done, "export_id": self.export_id},
            {"fine_tuning_job_id": done, "export_id": self.queued_export_id},
            {"fine_tuning_job_id": self.queued_job_id},
            {"fine_tuning_job_id": self.paused_job_id},
            {"fine_tuning_job_id": self.running_job_id},
            {"model": self.model},
            {"model": MODEL},
            {"upload_id": self.upload_id},
            {"upload_id": self.partial_upload_id},
            {"webhook_id": self.webhook_id},
        ]


def _job(
    session: Session, organization_id: str, file_id: str, status: str, **values: object
) -> Job:
    spec = resolve_spec(
        model=MODEL,
        seed=7,
        n_train_examples=12,
        hyperparameters=Hyperparameters(),
        lora=LoraSpec(),
        quantization=QuantizationSpec(),
        training=TrainingSpec(),
    )
    job = Job(
        id=new_id("ftjob"),
        organization_id=organization_id,
        model=MODEL,
        training_file_id=file_id,
        seed=7,
        spec=spec.model_dump(mode="json"),
        status=status,
        result_files=[],
        attempt=1 if status != "queued" else 0,
        **values,
    )
    session.add(job)
    session.flush()
    add_event(session, job, f"Created fine-tuning job: {job.id}")
    return job


def seed_organization(
    factory: sessionmaker[Session], data_dir: Path, organization_id: str
) -> Seeded:
    """A file, jobs in four states (with a lease on the running one), checkpoints with their
    files, a succeeded and a queued export, a fine-tuned model, and two pending uploads of
    the file's bytes: one with both its halves received, one with the first."""
    content = chat_dataset(12)
    with factory() as session:
        file = File(
            id=new_id("file"),
            organization_id=organization_id,
            filename="train.jsonl",
            purpose="fine-tune",
            bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            stats=asdict(DatasetStats(examples=12, format="chat", characters=400, messages=36)),
        )
        file.storage_key = storage_key(organization_id, file.id)
        session.add(file)
        write_files(data_dir, {file.storage_key: content})

        now = utcnow()
        done = _job(session, organization_id, file.id, "succeeded", finished_at=now)
        done.fine_tuned_model = f"ft:{MODEL}:acme:seeded:{done.id[6:14]}"
        done.trained_tokens = 1234
        done.lease_owner = LEASE_OWNER
        for step in (1, 2, 3):
            add_event(session, done, f"Step {step}", type="metrics", data={"step": step})
        write_files(data_dir / "jobs" / done.id / "adapter", ADAPTER_FILES)
        checkpoint = add_checkpoint(session, done, 2, 0.5)
        add_checkpoint(session, done, 1, 1.0)
        step_dir = data_dir / checkpoint.storage_key
        write_files(step_dir, {"COMPLETE": b"2\n", "optimizer.pt": b"state"})
        write_files(step_dir / "adapter", ADAPTER_FILES)
        export = add_export(session, done, finished_at=now, details={"max_abs_logit_diff": 0.0})
        queued_export = add_export(session, done, status="queued")
        write_files(data_dir / f"exports/{export.id}", MERGED_FILES)

        queued = _job(session, organization_id, file.id, "queued")
        paused = _job(session, organization_id, file.id, "paused")
        running = _job(
            session,
            organization_id,
            file.id,
            "running",
            lease_owner=LEASE_OWNER,
            lease_expires_at=now + timedelta(hours=1),
            started_at=now,
        )
        half = len(content) // 2
        upload, part_ids = _pending_upload(
            session, data_dir, organization_id, content, [content[:half], content[half:]]
        )
        partial, _ = _pending_upload(session, data_dir, organization_id, content, [content[:half]])
        webhook = seed_webhook(session, organization_id)
        session.commit()
        assert isinstance(export, Export) and done.fine_tuned_model
        return Seeded(
            organization_id=organization_id,
            file_id=file.id,
            succeeded_job_id=done.id,
            queued_job_id=queued.id,
            paused_job_id=paused.id,
            running_job_id=running.id,
            checkpoint_id=checkpoint.id,
            export_id=export.id,
            queued_export_id=queued_export.id,
            model=done.fine_tuned_model,
            upload_id=upload.id,
            upload_part_ids=part_ids,
            partial_upload_id=partial.id,
            webhook_id=webhook.id,
        )


def _pending_upload(
    session: Session, data_dir: Path, organization_id: str, content: bytes, parts: list[bytes]
) -> tuple[Upload, tuple[str, ...]]:
    """An upload of `content` that has received `parts`, stored as the API stores them."""
    now = utcnow()
    upload = Upload(
        id=new_id("upload"),
        organization_id=organization_id,
        filename="train.jsonl",
        purpose="fine-tune",
        bytes=len(content),
        mime_type="text/jsonl",
        status="pending",
        created_at=now,
        expires_at=now + timedelta(seconds=UPLOAD_LIFETIME_S),
    )
    session.add(upload)
    session.flush()
    part_ids = []
    for data in parts:
        part_id = new_id("part")
        key = f"{parts_prefix(organization_id, upload.id)}/{part_id}"
        session.add(
            UploadPart(
                id=part_id,
                upload_id=upload.id,
                organization_id=organization_id,
                bytes=len(data),
                storage_key=key,
                created_at=now,
            )
        )
        write_files(data_dir, {key: data})
        part_ids.append(part_id)
    return upload, tuple(part_ids)


def seed_webhook(session: Session, organization_id: str) -> WebhookEndpoint:
    """An endpoint as POST /v1/webhooks makes one (its URL is not called here); the
    organization's first one when it has any, so that seeding it again and again (once per
    fuzzed operation) never fills its quota of webhooks."""
    existing = session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.organization_id == organization_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        .limit(1)
    )
    if existing is not None:
        return existing
    webhook = WebhookEndpoint(
        id=new_id("wh"),
        organization_id=organization_id,
        url="https://hooks.example.com/loraforge",
        events=["fine_tuning.job.succeeded"],
        description="seeded",
        secret=new_secret(),
    )
    session.add(webhook)
    return webhook
