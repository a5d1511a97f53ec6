"""Real QLoRA jobs (CPU, tiny model) on the formats people bring, and a job that continues a
fine-tuned model: it starts from the parent's adapter, names it, and exports onto the base."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from tests.api.test_dataset_formats import tool_line
from tests.conftest import create_job, upload
from tests.factories import Tenant, chat_dataset, jsonl
from tests.worker.runner_settings import runner_settings  # noqa: F401 (fixture)
from worker.context import WorkerContext
from worker.exports import run_export
from worker.runner import JobRunner

# Steps that move a tiny model's loss on a repetitive dataset well within a few seconds.
SHORT = {
    "seed": 7,
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
    "training": {"max_steps": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0},
}


def train(
    client: TestClient, tenant: Tenant, settings: Settings, file_id: str, **fields: Any
) -> dict[str, Any]:
    """Create a job and run it in this process as a worker would; the finished job."""
    response = create_job(client, tenant, file_id, **{**SHORT, **fields})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert JobRunner(WorkerContext.from_settings(settings), job_id).run() == "succeeded"
    job: dict[str, Any] = client.get(
        f"/v1/fine_tuning/jobs/{job_id}", headers=tenant.headers
    ).json()
    return job


def step_losses(client: TestClient, tenant: Tenant, job_id: str) -> list[float]:
    events = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events?limit=100", headers=tenant.headers
    ).json()["data"]
    metrics = sorted(
        (e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]),
        key=lambda data: data["step"],
    )
    return [data["train_loss"] for data in metrics]


ALPACA = [{"instruction": f"What is {i} plus one?", "output": f"{i + 1}."} for i in range(12)]
SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": f"What is {i} plus one?"},
            {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": i}})},
            {"from": "observation", "value": str(i + 1)},
            {"from": "gpt", "value": f"{i + 1}."},
        ],
        "tools": json.dumps([{"name": "add", "parameters": {"type": "object"}}]),
    }
    for i in range(12)
]


@pytest.mark.parametrize(
    "rows",
    [[tool_line()] * 12, SHAREGPT, ALPACA],
    ids=["tool-calls", "sharegpt", "alpaca"],
)
def test_tool_call_sharegpt_and_alpaca_files_train(
    client: TestClient, tenant_a: Tenant, settings: Settings, rows: list[dict[str, Any]]
):
    file_id = upload(client, tenant_a, jsonl(*rows)).json()["id"]
    job = train(client, tenant_a, settings, file_id)
    losses = step_losses(client, tenant_a, job["id"])
    assert len(losses) == 8
    assert losses[-1] < losses[0] * 0.8, losses
    assert job["trained_tokens"] > 0


def test_a_job_on_a_fine_tuned_model_starts_from_its_adapter_names_it_and_exports(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    file_id = upload(client, tenant_a, chat_dataset(12)).json()["id"]
    # The first job is also the fresh start: same data, same seed, same steps.
    first = train(client, tenant_a, settings, file_id, suffix="first")
    first_losses = step_losses(client, tenant_a, first["id"])
    assert first_losses[-1] < first_losses[0] * 0.8, first_losses

    second = train(client, tenant_a, settings, file_id, model=first["fine_tuned_model"])
    second_losses = step_losses(client, tenant_a, second["id"])
    # Step 1 of the second job is measured on the first job's adapter: near where it ended,
    # far below a fresh start's step 1.
    assert second_losses[0] < first_losses[0] - 0.5 * (first_losses[0] - first_losses[-1])
    assert second["model"] == first["fine_tuned_model"]
    assert second["fine_tuned_model"].startswith("ft:loraforge/tiny-random-llama:")

    provenance = json.loads(
        (settings.data_dir / "jobs" / second["id"] / "adapter" / "provenance.json").read_text()
    )
    assert provenance["parent"] == {
        "model": first["fine_tuned_model"],
        "job_id": first["id"],
        "step": None,
    }
    assert provenance["base_model"]["id"] == "loraforge/tiny-random-llama"
    model = client.get(f"/v1/models/{second['fine_tuned_model']}", headers=tenant_a.headers)
    assert model.json()["parent"] == first["fine_tuned_model"]

    export = client.post(
        f"/v1/fine_tuning/jobs/{second['id']}/exports",
        headers=tenant_a.headers,
        json={"type": "merged", "dtype": "float32"},
    ).json()
    assert run_export(WorkerContext.from_settings(settings), export["id"]) == "succeeded"
    details = client.get(
        f"/v1/fine_tuning/jobs/{second['id']}/exports/{export['id']}", headers=tenant_a.headers
    ).json()
    assert details["status"] == "succeeded", details
