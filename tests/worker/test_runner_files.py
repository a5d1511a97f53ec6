"""A job whose training file expired (its expires_after passed) before a worker took it fails
with a message the user can act on, as one whose file was deleted does."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import File
from tests.conftest import create_job
from tests.factories import Tenant, chat_dataset
from tests.worker.runner_settings import runner_settings  # noqa: F401 (fixture)
from worker.context import WorkerContext
from worker.runner import JobRunner


def test_a_job_whose_training_file_expired_fails_saying_so(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    uploaded = client.post(
        "/v1/files",
        headers=tenant_a.headers,
        files={"file": ("t.jsonl", chat_dataset(12), "application/jsonl")},
        data={
            "purpose": "fine-tune",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
    ).json()
    job_id = create_job(client, tenant_a, uploaded["id"]).json()["id"]
    with session_factory() as session:  # the hour passes before a worker takes the job
        session.execute(
            update(File)
            .where(File.id == uploaded["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()

    assert JobRunner(WorkerContext.from_settings(settings), job_id).run() == "failed"

    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant_a.headers).json()
    assert job["error"] == {
        "code": "training_file_expired",
        "message": "the training file expired before the job ran",
        "param": "training_file",
    }
