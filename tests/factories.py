"""Factories: tenants with keys, datasets, jobs with events, checkpoints and exports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id, utcnow
from app.db.models import Checkpoint, Export, Job
from app.services.events import add_event
from app.services.keys import create_key, get_or_create_organization


@dataclass(frozen=True)
class Tenant:
    organization_id: str
    name: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_tenant(factory: sessionmaker[Session], name: str) -> Tenant:
    with factory() as session:
        organization = get_or_create_organization(session, name)
        created = create_key(session, organization, name=f"{name}-key")
        session.commit()
        return Tenant(organization.id, name, created.key, created.record.id)


def chat_line(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


def chat_dataset(n: int = 12) -> bytes:
    """`n` valid chat examples as JSONL bytes."""
    lines = [json.dumps(chat_line(f"What is {i} plus one?", f"{i + 1}.")) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def preference_line(question: str, preferred: str, non_preferred: str) -> dict[str, Any]:
    """One OpenAI preference (DPO) pair."""
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def preference_dataset(n: int = 12) -> bytes:
    """`n` valid preference pairs as JSONL bytes."""
    rows = [preference_line(f"What is {i} plus one?", f"{i + 1}.", "No idea.") for i in range(n)]
    return jsonl(*rows)


def jsonl(*rows: Any) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


def add_checkpoint(session: Session, job: Job, step: int, train_loss: float) -> Checkpoint:
    checkpoint = Checkpoint(
        id=new_id("ftckpt"),
        job_id=job.id,
        organization_id=job.organization_id,
        step_number=step,
        metrics={"step": step, "train_loss": train_loss},
        fine_tuned_model_checkpoint=f"ft:{job.model}:ckpt-step-{step}",
        storage_key=f"jobs/{job.id}/checkpoints/step-{step}",
    )
    session.add(checkpoint)
    return checkpoint


def add_metrics(session: Session, job: Job, steps: int) -> None:
    for step in range(1, steps + 1):
        add_event(
            session,
            job,
            f"Step {step}: training loss={2.0 / step:.3f}",
            type="metrics",
            data={"step": step, "train_loss": 2.0 / step},
        )


def add_export(session: Session, job: Job, status: str = "succeeded", **fields: Any) -> Export:
    export_id = new_id("ftexp")
    export = Export(
        id=export_id,
        job_id=job.id,
        organization_id=job.organization_id,
        type="merged",
        dtype="bfloat16",
        status=status,
        storage_key=f"exports/{export_id}",
        **fields,
    )
    session.add(export)
    return export


def set_job_status(factory: sessionmaker[Session], job_id: str, status: str) -> None:
    """Move a job as the worker would (finished_at set for the terminal statuses)."""
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.status = status
        if status in {"succeeded", "failed", "cancelled"}:
            job.finished_at = utcnow()
        session.commit()
