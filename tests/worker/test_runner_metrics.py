"""A job with a validation file, created through the API and run by the real JobRunner and
engine: its checkpoints carry every metric OpenAI's checkpoint object types as a number, its
checkpoint names are OpenAI's, and its metrics events use OpenAI's valid_* names."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import create_job, upload
from tests.factories import Tenant, chat_dataset
from tests.worker.runner_settings import runner_settings  # noqa: F401 (fixture)
from worker.context import WorkerContext
from worker.runner import JobRunner

pytestmark = pytest.mark.slow

CHECKPOINT_METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def test_checkpoints_carry_full_validation_and_token_accuracy(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings
):
    validation = upload(client, tenant_a, chat_dataset(10), filename="valid.jsonl").json()["id"]
    response = create_job(
        client,
        tenant_a,
        training_file,
        validation_file=validation,
        suffix="metrics run",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
        training={
            "max_steps": 4,
            "checkpoint_every_steps": 2,
            "max_seq_length": 64,
            "gradient_checkpointing": False,
        },
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    assert JobRunner(WorkerContext.from_settings(settings), job_id).run() == "succeeded"

    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant_a.headers).json()
    assert job["fine_tuned_model"].split(":")[3] == "metrics-run"
    checkpoints = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant_a.headers
    ).json()["data"]
    assert [c["step_number"] for c in checkpoints] == [4, 2]
    for checkpoint in checkpoints:
        step = checkpoint["step_number"]
        assert checkpoint["fine_tuned_model_checkpoint"] == (
            f"{job['fine_tuned_model']}:ckpt-step-{step}"
        )
        metrics = checkpoint["metrics"]
        assert metrics["step"] == step
        missing = [name for name in CHECKPOINT_METRICS if not isinstance(metrics[name], float)]
        assert not missing, metrics
        assert metrics["full_valid_loss"] > 0
        for name in CHECKPOINT_METRICS[1::2]:
            assert 0 <= metrics[name] <= 1, (name, metrics)

    events = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events?limit=100", headers=tenant_a.headers
    ).json()["data"]
    steps = {e["data"]["step"]: e["data"] for e in events if e["type"] == "metrics"}
    assert sorted(steps) == [1, 2, 3, 4]
    assert not [key for data in steps.values() for key in data if key.startswith("eval")]
    assert steps[2]["full_valid_loss"] == checkpoints[1]["metrics"]["full_valid_loss"]
    assert steps[1]["full_valid_loss"] is None
    assert 0 <= steps[1]["train_mean_token_accuracy"] <= 1
