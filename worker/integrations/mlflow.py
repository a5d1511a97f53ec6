"""MLflow: a run in the tenant's experiment on the operator's tracking server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from app.config import Settings

# MLflow's HTTP client retries for minutes by default: a dead server would hold training.
RETRY_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's limits: 100 params per batch, 6000 characters per value.
PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000
STATUSES = {"succeeded": "FINISHED", "cancelled": "KILLED"}


class MlflowRun:
    name = "MLflow"

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(key, value, now_ms, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_adapter(self, adapter_dir: Path) -> None:
        self.client.log_artifacts(self.run_id, str(adapter_dir), artifact_path="adapter")

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=STATUSES.get(status, "FAILED"))


def start_mlflow(
    settings: Settings, options: dict[str, Any], params: dict[str, Any], tags: dict[str, str]
) -> MlflowRun:
    for name, value in RETRY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(options["experiment"])
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(options["experiment"])
    )
    run = client.create_run(
        experiment_id,
        run_name=options.get("run_name"),
        tags={**tags, **(options.get("tags") or {})},
    )
    items = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    for start in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=items[start : start + PARAMS_PER_BATCH])
    return MlflowRun(client, run.info.run_id)
