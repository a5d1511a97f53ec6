"""Settings, read from LORAFORGE_* environment variables (and an optional .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.catalog import CatalogEntry, build_catalog

MiB = 1 << 20


class Settings(BaseSettings):
    """Everything an operator can set. Empty URLs mean "embedded mode in data_dir"."""

    model_config = SettingsConfigDict(env_prefix="LORAFORGE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./data"), description=("Database, broker, uploads and artifacts in embedded mode")
    )
    database_url: str = Field(
        "",
        description=(
            "SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db`; "
            "empty: SQLite in the data dir"
        ),
    )
    broker_url: str = Field(
        "",
        description=(
            "Celery broker, e.g. `redis://host:6379/0`; empty: a SQLite broker in the data dir"
        ),
    )
    max_upload_bytes: int = Field(
        512 * MiB, description=("Upload cap: 413 as soon as this many bytes have arrived")
    )
    max_line_bytes: int = Field(
        4 * MiB, description=("Longest JSONL line (`line_too_long` beyond, never buffered)")
    )
    min_training_examples: int = Field(10, description="Fewer is `too_few_examples`")
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            'Catalog, JSON: `{"name": {"path": "/models/x"}}` or '
            '`{"name": {"hub_id": "org/repo", "revision": "<commit>"}}`'
        ),
    )
    job_queue: str = Field(
        "training", description=("Celery queue for training jobs when no GPU classes are set")
    )
    export_queue: str = Field("exports", description="Celery queue for merged exports")
    enqueue_timeout_s: float = Field(
        5.0,
        description=("Broker connect timeout when publishing (the reaper publishes what failed)"),
    )
    queue_memory: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "GPU classes, JSON `{queue: device bytes}`: a job goes to the smallest queue it fits; "
            "one that fits none is refused"
        ),
    )
    worker_memory_bytes: int | None = Field(
        None,
        description=("A worker's device memory; detected on CUDA when unset, unlimited on the CPU"),
    )
    lease_seconds: float = Field(
        120.0, description=("A running job's lease; the reaper re-queues the job when it expires")
    )
    heartbeat_seconds: float = Field(15.0, description="How often a worker extends its lease")
    max_attempts: int = Field(3, description="Attempts before a job whose worker keeps dying fails")
    reaper_interval_s: float = Field(15.0, description="How often each worker's reaper runs")
    requeue_after_s: float = Field(
        300.0, description=("A queued job nobody claimed is published again after this long")
    )
    metrics_flush_s: float = Field(
        2.0,
        description=("Metrics events are written in batches this often, never one commit per step"),
    )
    event_poll_interval_s: float = Field(
        0.5, description=("Server-sent event streams poll the database this often")
    )
    event_keepalive_s: float = Field(
        15.0, description=("A keep-alive comment after this long without an event")
    )
    run_migrations_on_start: bool = Field(
        True, description=("Apply migrations when the API starts")
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'loraforge.db').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    def catalog(self) -> dict[str, CatalogEntry]:
        return build_catalog(self.models)

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()


def settings_reference() -> str:
    """The README's settings table, generated from the fields above."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = f"./{default}"
        shown = "empty" if default in ("", None, {}) else f"`{default}`"
        rows.append(f"| `LORAFORGE_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"
