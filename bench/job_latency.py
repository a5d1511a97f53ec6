"""POST job -> `running` latency and cancel latency, Redis vs the embedded SQLite broker.

Starts real processes: `loraforge api` + `loraforge worker` on a fresh Postgres database and
Redis, then `loraforge serve` (SQLite + SQLite broker). For each stack it creates jobs one
after another on the tiny model and reads the database's own timestamps: created_at (the
API's commit) to started_at (the worker's claim, before any model load). Cancel latency is
client-side: POST cancel -> the job reads `cancelled`.

    python bench/job_latency.py [--jobs 10] [--quick] [--out-dir DIR]

Prints JSON and writes bench/results/job_latency.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db.models import Job  # noqa: E402
from bench.common import finish, header  # noqa: E402
from tests.e2e.stacks import (  # noqa: E402
    Stack,
    create_job,
    embedded_stack,
    hello_dataset,
    metric_steps,
    postgres_redis_stack,
    upload,
    wait_status,
)
from tests.live import wait_for  # noqa: E402


def database_url(stack: Stack) -> str:
    return stack.env.get("LORAFORGE_DATABASE_URL") or f"sqlite:///{stack.data_dir / 'loraforge.db'}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": statistics.median(values),
        "p90_s": percentile(values, 0.9),
        "max_s": max(values),
    }


def measure(stack: Stack, jobs: int) -> dict[str, Any]:
    client: httpx.Client = stack.client()
    file_id = upload(client, hello_dataset(20))
    engine = create_engine(database_url(stack))
    start_latencies = []
    for _ in range(jobs):
        job = create_job(client, file_id, max_steps=2)
        wait_status(client, job["id"], "succeeded", "failed", timeout=120)
        with engine.connect() as connection:
            created, started = connection.execute(
                select(Job.created_at, Job.started_at).where(Job.id == job["id"])
            ).one()
        start_latencies.append((started - created).total_seconds())
    cancel_latencies = []
    for _ in range(max(3, jobs // 3)):
        job = create_job(client, file_id, max_steps=5000, checkpoint_every_steps=100000)
        wait_for(lambda j=job: metric_steps(client, j["id"]), 120, "training")
        began = time.perf_counter()
        client.post(f"/fine_tuning/jobs/{job['id']}/cancel")
        wait_status(client, job["id"], "cancelled", timeout=60, interval=0.02)
        cancel_latencies.append(time.perf_counter() - began)
    engine.dispose()
    return {
        "post_to_running": summary(start_latencies),
        "cancel_to_cancelled": summary(cancel_latencies),
        "first_job_s": start_latencies[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 jobs per stack (CI smoke run)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    jobs = 2 if args.quick else args.jobs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = f"python bench/job_latency.py {'--quick' if args.quick else f'--jobs {jobs}'}"
    results = header("job_latency", command, args.quick)
    results["method"] = (
        "created_at -> started_at from the database (claim, before model load); "
        "cancel: client POST -> status cancelled, polled every 20 ms"
    )
    results["goals"] = {"redis_p50_s": 1.0, "embedded_p50_s": 2.0}
    with tempfile.TemporaryDirectory() as root:
        with postgres_redis_stack(Path(root) / "redis") as stack:
            results["redis"] = measure(stack, jobs)
        with embedded_stack(Path(root) / "embedded") as stack:
            results["embedded"] = measure(stack, jobs)
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
