"""Running stacks for end-to-end tests: `loraforge serve` (SQLite + SQLite broker), or
`loraforge api` + `loraforge worker` processes on a fresh Postgres database and Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.databases import (
    check_redis_databases,
    forget_queues,
    postgres_database,
    redis_url,
    unique_name,
)
from tests.live import (
    alive,
    api_server,
    loraforge,
    serve_process,
    start_worker,
    stop,
    wait_for,
    worker_children,
)

REDIS_URL = redis_url(1)
# Short leases so that recovery after a kill -9 takes seconds, not minutes.
FAST_RECOVERY = {
    "LORAFORGE_LEASE_SECONDS": "4",
    "LORAFORGE_HEARTBEAT_SECONDS": "1",
    "LORAFORGE_REAPER_INTERVAL_S": "1",
    "LORAFORGE_REQUEUE_AFTER_S": "5",
    "LORAFORGE_METRICS_FLUSH_S": "0.3",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "2",
}
JOB_TIMEOUT_S = 240


@dataclass
class Stack:
    kind: str
    base_url: str
    key: str
    env: dict[str, str]
    root: Path
    serve_pid: int | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["LORAFORGE_DATA_DIR"])

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/v1",
            timeout=30,
            headers={"Authorization": f"Bearer {self.key}"},
        )

    def worker_pids(self) -> list[int]:
        if self.serve_pid is not None:
            return worker_children(self.serve_pid)
        return [w.pid for w in self.workers if w.poll() is None]

    def add_worker(self, *queues: str) -> subprocess.Popen[bytes]:
        """A worker on `queues` (every queue when none are named)."""
        args = ("--queues", ",".join(queues)) if queues else ()
        worker = start_worker(self.env, self.root / "worker.log", *args)
        self.workers.append(worker)
        return worker

    def kill_worker(self) -> int:
        """kill -9 a worker mid-job; a new one comes from serve's supervisor or from here."""
        (pid, *_) = self.worker_pids()
        os.kill(pid, signal.SIGKILL)
        if self.serve_pid is None:
            for worker in self.workers:
                if worker.pid == pid:
                    worker.wait(10)
            self.add_worker()
        return pid

    def terminate_worker(self, timeout: float) -> tuple[int, float]:
        """SIGTERM a worker; (its pid, seconds until it was gone). serve's supervisor starts
        another; here the caller adds one when it wants one."""
        (pid, *_) = self.worker_pids()
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), timeout, f"worker {pid} to exit", interval=0.05)
        return pid, time.monotonic() - started


@contextmanager
def embedded_stack(root: Path, settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """`loraforge serve` in `root`, with LORAFORGE_* `settings` on top of FAST_RECOVERY."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**FAST_RECOVERY, **(settings or {}), "LORAFORGE_DATA_DIR": str(root / "data")}
    for name in ("LORAFORGE_DATABASE_URL", "LORAFORGE_BROKER_URL"):
        env[name] = ""
    with serve_process(env, root / "serve.log") as (base_url, key, pid):
        yield Stack("embedded", base_url, key, env, root, serve_pid=pid)


@contextmanager
def postgres_redis_stack(
    root: Path,
    workers: int = 1,
    broker_url: str = REDIS_URL,
    settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """`loraforge api` and `workers` workers on a fresh Postgres database and `broker_url`."""
    queues = [unique_name("training"), unique_name("exports")]
    started: list[subprocess.Popen[bytes]] = []  # every worker, killed ones too
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        if broker_url == REDIS_URL:  # a test's own Redis server goes with what it holds
            check_redis_databases()
            # Registered first, so it runs last: once the workers are gone (each named
            # loraforge-<pid>@host by worker/main.py).
            cleanup.callback(
                lambda: forget_queues(broker_url, queues + [f"loraforge-{w.pid}@" for w in started])
            )
        database_url = cleanup.enter_context(postgres_database())
        env = {
            **FAST_RECOVERY,
            **(settings or {}),
            "LORAFORGE_DATA_DIR": str(root / "data"),
            "LORAFORGE_DATABASE_URL": database_url,
            "LORAFORGE_BROKER_URL": broker_url,
            "LORAFORGE_JOB_QUEUE": queues[0],
            "LORAFORGE_EXPORT_QUEUE": queues[1],
        }
        base_url = cleanup.enter_context(api_server(env, root / "api.log"))
        created = loraforge(env, "keys", "create", "--org", "e2e")
        assert created.returncode == 0, created.stderr
        stack = Stack("postgres-redis", base_url, created.stdout.strip(), env, root, None, started)
        cleanup.callback(lambda: [stop(w, grace_s=5) for w in stack.workers])
        for _ in range(workers):
            stack.add_worker()
        yield stack


def hello_dataset(n: int = 40) -> bytes:
    """A small repetitive chat dataset the tiny model learns quickly."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say hello number {i % 4}"},
                {"role": "assistant", "content": f"Hello {i % 4}! Hello {i % 4}!"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: httpx.Client, content: bytes, name: str = "train.jsonl") -> str:
    response = client.post(
        "/files", files={"file": (name, io.BytesIO(content))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def create_job(client: httpx.Client, training_file: str, **training: Any) -> dict[str, Any]:
    body = {
        "model": "loraforge/tiny-random-llama",
        "training_file": training_file,
        "suffix": "e2e",
        "seed": 1,
        "training": {"learning_rate": 2e-3, "gradient_checkpointing": False, **training},
    }
    response = client.post("/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = client.get(f"/fine_tuning/jobs/{job_id}").json()
    return data


def wait_status(
    client: httpx.Client,
    job_id: str,
    *statuses: str,
    timeout: float = JOB_TIMEOUT_S,
    interval: float = 0.25,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = job(client, job_id)
        return current if current["status"] in statuses else None

    return wait_for(reached, timeout, f"job {job_id} to reach {statuses}", interval)


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every event, oldest first."""
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = client.get(f"/fine_tuning/jobs/{job_id}/events", params=params).json()
        found.extend(page["data"])
        if not page["has_more"]:
            return found[::-1]
        after = page["data"][-1]["id"]


def metric_steps(client: httpx.Client, job_id: str) -> list[tuple[int, float]]:
    return [
        (e["data"]["step"], e["data"]["train_loss"])
        for e in events(client, job_id)
        if e["type"] == "metrics"
    ]


def wait_export(client: httpx.Client, export_path: str, timeout: float = 120) -> dict[str, Any]:
    """The export at `export_path` (under /v1) once it has succeeded or failed."""

    def ended() -> dict[str, Any] | None:
        export: dict[str, Any] = client.get(export_path).json()
        return export if export["status"] in ("succeeded", "failed") else None

    return wait_for(ended, timeout, "the export")


def checkpoint_steps(client: httpx.Client, job_id: str) -> list[int]:
    page = client.get(f"/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100}).json()
    return sorted(c["step_number"] for c in page["data"])
