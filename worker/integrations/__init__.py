"""Tracking integrations (W&B, MLflow) a job asked for, logged from the worker.

Each run gets the resolved config as params, every step's metrics and the final adapter.
A tracker that fails is dropped from the job with a warning event; the job goes on, and
never fails because of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from app.config import Settings

log = logging.getLogger(__name__)


class TrackingRun(Protocol):
    name: str

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_adapter(self, adapter_dir: Path) -> None: ...

    def finish(self, status: str) -> None: ...


# The step report's fields that are not metrics of their own.
NOT_METRICS = frozenset({"step", "total_steps"})


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 8}} -> {"lora.r": 8}: params as trackers list them."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Trackers:
    """The job's tracking runs; every call to one is guarded (see the module docstring)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.runs: list[TrackingRun] = []

    def start(
        self,
        integrations: list[dict[str, Any]] | None,
        settings: Settings,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        for integration in integrations or []:
            kind = integration["type"]
            options = integration[kind]
            name = "W&B" if kind == "wandb" else "MLflow"
            try:
                if kind == "wandb":
                    from worker.integrations.wandb import start_wandb

                    self.runs.append(start_wandb(settings, options, params, tags))
                else:
                    from worker.integrations.mlflow import start_mlflow

                    self.runs.append(start_mlflow(settings, options, params, tags))
            except Exception as exc:
                self._failed(name, "starting the run", exc)

    def log_metrics(self, step: int, data: dict[str, Any]) -> None:
        metrics = {
            key: float(value)
            for key, value in data.items()
            if key not in NOT_METRICS and isinstance(value, int | float)
        }
        self._each("logging metrics", "log_metrics", step, metrics)

    def log_adapter(self, adapter_dir: Path) -> None:
        self._each("uploading the adapter", "log_adapter", adapter_dir)

    def finish(self, status: str) -> None:
        self._each("closing the run", "finish", status)
        self.runs = []

    def _each(self, action: str, method: str, *args: Any) -> None:
        for run in list(self.runs):
            try:
                getattr(run, method)(*args)
            except Exception as exc:
                self.runs.remove(run)
                self._failed(run.name, action, exc)

    def _failed(self, name: str, action: str, exc: Exception) -> None:
        log.warning("%s logging failed while %s", name, action, exc_info=exc)
        message = f"{name} logging failed while {action}: {type(exc).__name__}: {exc}"
        self.report(f"{message[:400]}; the job goes on without it")
