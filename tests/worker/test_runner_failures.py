"""A job created through the API and run by the real JobRunner and engine, on a worker whose
disk is full: the job fails with insufficient_storage, not internal_error."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, JobEvent
from tests.conftest import create_job
from tests.factories import Tenant
from tests.worker.runner_settings import runner_settings  # noqa: F401 (fixture)
from worker.context import WorkerContext
from worker.runner import JobRunner

DEV_FULL = Path("/dev/full")

pytestmark = pytest.mark.skipif(
    not (DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)),
    reason="/dev/full is not the ENOSPC device here",
)


def test_a_job_whose_worker_disk_is_full_fails_as_insufficient_storage(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    response = create_job(
        client,
        tenant_a,
        training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
        training={"max_steps": 2, "max_seq_length": 64, "gradient_checkpointing": False},
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    # The job's own files land on a device that answers every write with ENOSPC.
    job_dir = settings.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "results.csv").symlink_to(DEV_FULL)

    status = JobRunner(WorkerContext.from_settings(settings), job_id).run()

    assert status == "failed"
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        failed = [m for m in messages if m.startswith("Fine-tuning job failed")]
    assert job.error is not None
    assert (job.error["code"], job.error["param"]) == ("insufficient_storage", None)
    assert "ran out of disk space" in job.error["message"]
    assert failed == [f"Fine-tuning job failed: {job.error['message']}"]
    assert stat.S_ISCHR(DEV_FULL.stat().st_mode)
