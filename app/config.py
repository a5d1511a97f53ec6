"""Settings, read from LORAFORGE_* environment variables (and an optional .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
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
    max_upload_part_bytes: int = Field(
        64 * MiB,
        gt=0,
        description=(
            "Largest part of an upload sent in parts (`/v1/uploads`, OpenAI's 64 MiB); 413 beyond"
        ),
    )
    max_line_bytes: int = Field(
        4 * MiB, description=("Longest JSONL line (`line_too_long` beyond, never buffered)")
    )
    min_training_examples: int = Field(10, description="Fewer is `too_few_examples`")
    rate_limit_per_minute: int = Field(
        600,
        ge=0,
        description=(
            "Requests a minute per API key, in bursts of as many (429 with Retry-After beyond); "
            "counted in each API process; 0: no limit"
        ),
    )
    api_key_cache_s: float = Field(
        5.0,
        ge=0,
        description=(
            "Each API process remembers a key that authenticated for this long, so a revoked "
            "key is refused within it; 0: look every key up on every request"
        ),
    )
    max_concurrent_jobs: int = Field(
        10, ge=0, description="Jobs an organization may have queued or running at once; 0: no limit"
    )
    max_stored_bytes: int = Field(
        10 * 1024 * MiB,
        ge=0,
        description="Bytes of uploaded files an organization may keep; 0: no limit",
    )
    max_files: int = Field(1000, ge=0, description="Files an organization may keep; 0: no limit")
    max_concurrent_uploads: int = Field(
        4,
        ge=0,
        description=(
            "Uploads an organization may send at once, counted in each API process (429 with "
            "Retry-After beyond); 0: no limit"
        ),
    )
    lock_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "How long an API request waits for a row lock on PostgreSQL before it is answered "
            "503 with Retry-After (the API's locks last one short transaction each)"
        ),
    )
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
            "GPU classes, JSON `{queue: device bytes}`, the same on the API and the workers: a "
            "job goes to the smallest queue it fits; one that fits none is refused"
        ),
    )
    worker_memory_bytes: int | None = Field(
        None,
        description=(
            "Memory a worker has for a job (a larger job stays queued for a larger worker); "
            "unset: the GPU's, or on the CPU the RAM available when it first looks. On the API "
            "without GPU classes, larger jobs are refused; `loraforge serve` measures it itself"
        ),
    )
    lease_seconds: float = Field(
        120.0,
        description=(
            "A running job's or export's lease; the reaper re-queues it when the lease expires"
        ),
    )
    heartbeat_seconds: float = Field(15.0, description="How often a worker extends its lease")
    stop_grace_s: float = Field(
        60.0,
        gt=0,
        description=(
            "On SIGTERM a worker checkpoints its job at the next step, queues it again for "
            "another worker and exits within this long (compose's `stop_grace_period` matches)"
        ),
    )
    max_attempts: int = Field(
        3,
        description=(
            "Lost workers (a lease that expired: killed, out of memory, machine gone) after which "
            "a job or export fails; pauses, resumes and stops that hand it back do not count"
        ),
    )
    reaper_interval_s: float = Field(15.0, description="How often each worker's reaper runs")
    requeue_after_s: float = Field(
        300.0,
        description=(
            "A queued job or export whose message the broker lost is published again once it "
            "has waited this long since its last publish"
        ),
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
    inference_url: str = Field(
        "",
        description=(
            "The inference server (OpenAI protocol plus vLLM's adapter endpoints) for every base "
            "model without an entry in `inference_backends`; `loraforge serve` sets it to the "
            "one it runs; empty: chat and completions answer 503"
        ),
    )
    inference_backends: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Inference servers per base model, JSON `{"base": "http://vllm:8000"}`, e.g. a vLLM '
            "server run with `--enable-lora` and `--served-model-name base`"
        ),
    )
    inference_api_key: SecretStr | None = Field(
        None, description="Bearer key the API sends to inference servers (vLLM's `--api-key`)"
    )
    inference_max_tokens: int = Field(
        2048, ge=1, description="Most tokens one chat or completion choice may generate"
    )
    inference_timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for an inference server's answer (or next chunk)"
    )
    inference_max_adapters: int = Field(
        8,
        ge=1,
        description=(
            "Adapters `loraforge inference` keeps loaded per base model; the least recently "
            "used idle one makes room"
        ),
    )
    max_concurrent_generations: int = Field(
        4,
        ge=0,
        description=(
            "Chat and completion requests an organization may have running at once, counted in "
            "each API process (429 with Retry-After beyond); 0: no limit"
        ),
    )
    run_migrations_on_start: bool = Field(
        True, description=("Apply migrations when the API starts")
    )
    storage_backend: Literal["local", "s3"] = Field(
        "local",
        description=(
            "Artifacts (uploads, checkpoints, adapters, results, exports): `local` in the data "
            "dir, or `s3`: an S3-compatible bucket shared by every machine"
        ),
    )
    s3_bucket: str = Field("", description="The bucket, for `s3` storage")
    s3_prefix: str = Field("", description="Object names start with this prefix, e.g. `loraforge`")
    s3_endpoint_url: str = Field(
        "", description="e.g. `http://minio:9000`; empty: AWS S3 (boto3's default endpoint)"
    )
    s3_region: str = Field("", description="Region name; empty: boto3's default")
    s3_access_key_id: str = Field(
        "", description="Access key; empty: boto3's chain (`AWS_*` variables, instance role)"
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret key, with `LORAFORGE_S3_ACCESS_KEY_ID`"
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="`path` for MinIO and most self-hosted S3 servers"
    )
    cache_dir: Path | None = Field(
        None,
        description=(
            "Local scratch for `s3` storage: job workspaces, fetched datasets, staged uploads "
            "and archives; empty: `cache` in the data dir"
        ),
    )

    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Webhook hosts allowed although they resolve to loopback, private, link-local or "
            'metadata addresses, JSON `["hooks.internal", "10.0.0.0/8"]` (names, addresses or '
            "networks); every other such URL is refused"
        ),
    )
    webhook_queue: str = Field("webhooks", description="Celery queue for webhook deliveries")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="How long a webhook delivery waits for the receiver's answer"
    )
    webhook_retry_base_s: float = Field(
        5.0,
        gt=0,
        description=(
            "A failed webhook delivery is tried again after this long, then twice as long each "
            "time (an hour at most)"
        ),
    )
    webhook_retry_window_s: float = Field(
        86400.0,
        gt=0,
        description="A webhook delivery is given up once it has failed for this long",
    )
    webhook_poll_interval_s: float = Field(
        2.0,
        gt=0,
        description="How often each worker looks for webhook deliveries that are due",
    )

    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description=(
            "Each worker serves Prometheus metrics on this port (step time, tokens/s, memory, "
            "job durations, reaper actions, webhook attempts); 0: off"
        ),
    )

    wandb_mode: Literal["disabled", "online", "offline"] = Field(
        "disabled",
        description=(
            'Jobs may log to Weights & Biases (`integrations: [{"type": "wandb"}]`): '
            "`online` with LORAFORGE_WANDB_API_KEY, `offline` into the data dir's `wandb` "
            "folder (for `wandb sync`); `disabled`: such jobs are refused"
        ),
    )
    wandb_api_key: SecretStr | None = Field(None, description="The W&B key the workers log with")
    wandb_base_url: str = Field("", description="A self-hosted W&B server; empty: W&B's cloud")
    mlflow_tracking_uri: str = Field(
        "",
        description=(
            'The MLflow tracking server jobs may log to (`integrations: [{"type": '
            '"mlflow"}]`), e.g. `http://mlflow:5000`; empty: such jobs are refused'
        ),
    )

    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description=(
            "Logs of `loraforge serve`, `api`, `worker` and `inference` on stdout: `json`, one "
            "object per line with request_id, organization, job_id and attempt where they apply; "
            "`text`, lines for people; `auto`: text on a terminal, JSON anywhere else"
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The least severe log records written"
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'loraforge.db').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

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
        shown = "empty" if default in ("", None, {}, []) else f"`{default}`"
        rows.append(f"| `LORAFORGE_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"
