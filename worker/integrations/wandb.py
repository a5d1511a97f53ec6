"""Weights & Biases: a run in the tenant's project, online with the operator's key or
offline into the data dir (`wandb sync` uploads it later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Settings


class WandbRun:
    name = "W&B"

    def __init__(self, run: Any, job_id: str) -> None:
        self.run, self.job_id = run, job_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_adapter(self, adapter_dir: Path) -> None:
        import wandb

        artifact = wandb.Artifact(f"adapter-{self.job_id}", type="model")
        artifact.add_dir(str(adapter_dir))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "succeeded" else 1)


def start_wandb(
    settings: Settings, options: dict[str, Any], params: dict[str, Any], tags: dict[str, str]
) -> WandbRun:
    import wandb

    directory = settings.data_dir / "wandb"
    directory.mkdir(parents=True, exist_ok=True)
    configured: dict[str, Any] = {"mode": settings.wandb_mode}
    if settings.wandb_api_key is not None:
        configured["api_key"] = settings.wandb_api_key.get_secret_value()
    if settings.wandb_base_url:
        configured["base_url"] = settings.wandb_base_url
    run_settings = wandb.Settings(
        **configured, silent=True, console="off", save_code=False, x_disable_stats=True
    )
    run = wandb.init(
        project=options["project"],
        name=options.get("name"),
        entity=options.get("entity"),
        tags=list(options.get("tags") or []),
        config={**params, **tags},
        dir=str(directory),
        reinit="create_new",
        settings=run_settings,
    )
    return WandbRun(run, tags["loraforge.job_id"])
