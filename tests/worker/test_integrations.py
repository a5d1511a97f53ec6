"""W&B and MLflow integrations of a job created through the API and run by the real
JobRunner and engine: W&B offline writes a run with the job's params and metrics; a real
`mlflow server` on 127.0.0.1 receives the params, the metrics of every step and the adapter;
a dead tracking server leaves the job succeeded, with an event that says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import JobEvent
from tests.conftest import create_job
from tests.factories import Tenant
from tests.live import free_port, wait_for
from tests.worker.wandb_records import records
from worker.context import WorkerContext
from worker.runner import JobRunner

pytestmark = pytest.mark.slow

STEPS = 4
TRAINING = {"max_steps": STEPS, "max_seq_length": 64, "gradient_checkpointing": False}
MLFLOW_START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port, stopped by pid at the end of the module."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/health"), MLFLOW_START_TIMEOUT_S, "mlflow server", 0.5)
        yield url
    finally:
        # Its own process group: the server's uvicorn workers go with it.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, mlflow_server: str) -> Settings:
    """SQLite in the data dir (models/ is the session's tiny model), W&B offline, MLflow."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(models_dir, target_is_directory=True)
    return Settings(
        data_dir=data_dir,
        broker_url="memory://",
        min_training_examples=10,
        wandb_mode="offline",
        mlflow_tracking_uri=mlflow_server,
        _env_file=None,  # type: ignore[call-arg]
    )


def run_job(
    client: TestClient, tenant: Tenant, file_id: str, settings: Settings, **body: Any
) -> str:
    response = create_job(client, tenant, file_id, suffix="tracked", training=TRAINING, **body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["id"]
    assert JobRunner(WorkerContext.from_settings(settings), job_id).run() == "succeeded"
    return job_id


def warnings_of(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.level == "warn")
            )
        )


def step_losses(factory: sessionmaker[Session], job_id: str) -> dict[int, float]:
    with factory() as session:
        rows = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        )
        return {data["step"]: data["train_loss"] for data in rows}


def test_mlflow_receives_params_every_step_and_the_adapter(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    from mlflow import MlflowClient

    integration = {
        "type": "mlflow",
        "mlflow": {"experiment": "acme-ft", "run_name": "first", "tags": {"team": "nlp"}},
    }
    job_id = run_job(client, tenant_a, training_file, settings, integrations=[integration])
    assert warnings_of(session_factory, job_id) == []

    tracking = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = tracking.get_experiment_by_name("acme-ft")
    (run,) = tracking.search_runs([experiment.experiment_id])
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.data.tags["team"] == "nlp" and run.data.tags["loraforge.job_id"] == job_id
    assert run.data.params["lora.r"] == "16"
    assert run.data.params["model"] == "loraforge/tiny-random-llama"
    assert int(run.data.params["training.max_steps"]) == STEPS
    history = tracking.get_metric_history(run.info.run_id, "train_loss")
    losses = step_losses(session_factory, job_id)
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert sorted(losses) == list(range(1, STEPS + 1))
    adapter = {Path(a.path).name for a in tracking.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter
    shown = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant_a.headers).json()
    assert shown["integrations"] == [integration]


def test_wandb_offline_writes_a_run_with_the_jobs_metrics(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    integration = {"type": "wandb", "wandb": {"project": "acme-ft", "tags": ["nlp"]}}
    job_id = run_job(client, tenant_a, training_file, settings, integrations=[integration])
    assert warnings_of(session_factory, job_id) == []

    (run_file,) = (settings.data_dir / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")
    found = records(run_file)
    kinds = [record.WhichOneof("record_type") for record in found]
    (run,) = [r.run for r in found if r.HasField("run")]
    assert run.project == "acme-ft" and list(run.tags) == ["nlp"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["loraforge.job_id"] == job_id and config["lora.r"] == 16
    history = {
        r.history.step.num: {
            item.nested_key[0]: json.loads(item.value_json) for item in r.history.item
        }
        for r in found
        if r.HasField("history")
    }
    losses = step_losses(session_factory, job_id)
    assert sorted(history) == sorted(losses) == list(range(1, STEPS + 1))
    assert {step: row["train_loss"] for step, row in history.items()} == pytest.approx(losses)
    (artifact,) = [r.artifact for r in found if r.HasField("artifact")]
    assert artifact.type == "model"
    assert "adapter_model.safetensors" in {entry.path for entry in artifact.manifest.contents}
    (exit_record,) = [r.exit for r in found if r.HasField("exit")]
    assert exit_record.exit_code == 0 and kinds[-1] == "exit"


def test_a_dead_tracking_server_leaves_the_job_succeeded_with_an_event_that_says_so(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    dead = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    integration = {"type": "mlflow", "mlflow": {"experiment": "gone"}}
    job_id = run_job(client, tenant_a, training_file, dead, integrations=[integration])
    (warning,) = warnings_of(session_factory, job_id)
    assert warning.startswith("MLflow logging failed while starting the run")
    assert warning.endswith("the job goes on without it")
    assert step_losses(session_factory, job_id)
