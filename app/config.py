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

    data_dir: Path = Path("./data")
    database_url: str = ""
    broker_url: str = ""
    # Uploads are refused with 413 as soon as this many bytes have arrived.
    max_upload_bytes: int = 512 * MiB
    # A single JSONL line over this is refused (line_too_long) without being buffered.
    max_line_bytes: int = 4 * MiB
    min_training_examples: int = 10
    # name -> {"path": ...} or {"hub_id": ..., "revision": ...}; JSON in LORAFORGE_MODELS.
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_seed: int = 42
    job_queue: str = "training"
    export_queue: str = "exports"
    # Celery's broker connection for enqueue: fail fast instead of retrying for minutes.
    enqueue_timeout_s: float = 5.0
    # GPU classes: queue name -> device memory in bytes. Empty: every job goes to job_queue and
    # no fit check happens at creation. Set, a job goes to the smallest queue it fits in and a
    # job that fits none is refused.
    queue_memory: dict[str, int] = Field(default_factory=dict)
    # A worker's own device memory; detected (CUDA) when unset, unlimited on the CPU.
    worker_memory_bytes: int | None = None
    # Leases (DESIGN §3): a running job's worker extends its lease every heartbeat; the reaper
    # re-queues a job whose lease expired, up to max_attempts attempts.
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 15.0
    max_attempts: int = 3
    reaper_interval_s: float = 15.0
    # A queued job nobody claimed is published again after this long (a lost message).
    requeue_after_s: float = 300.0
    # Metrics events are written in batches, never one commit per step (SQLite has one writer).
    metrics_flush_s: float = 2.0
    # Server-sent event streams poll the database this often, and send a keep-alive comment
    # after this long without an event (proxies drop idle connections).
    event_poll_interval_s: float = 0.5
    event_keepalive_s: float = 15.0
    run_migrations_on_start: bool = True
    log_level: str = "INFO"

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
