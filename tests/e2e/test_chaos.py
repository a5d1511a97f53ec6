"""Chaos with real processes: a Redis restart that loses queued messages, one message
delivered twice to two workers, and a worker killed mid-export."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection
from kombu.exceptions import ChannelError
from sqlalchemy import create_engine, select

from app.db.models import Export
from app.queue import TASK_RUN_JOB
from tests.e2e.stacks import (
    create_job,
    events,
    hello_dataset,
    job,
    metric_steps,
    postgres_redis_stack,
    upload,
    wait_status,
)
from tests.live import free_port, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@contextmanager
def private_redis(port: int, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of our own on 127.0.0.1:port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed on this machine kind"
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(log_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _pings(url), 10, "redis to start")
        yield process
    finally:
        stop(process, grace_s=5)


def _pings(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=0.5) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def queued_messages(broker_url: str, queue: str) -> int:
    """Messages waiting in `queue`; 0 until the first publish has created it."""
    with Connection(broker_url) as connection:
        try:
            return connection.SimpleQueue(queue).qsize()
        except ChannelError:
            return 0


def test_redis_restart_while_jobs_are_queued_loses_nothing(tmp_path: Path):
    port = free_port()
    broker_url = f"redis://127.0.0.1:{port}/0"
    with (
        private_redis(port, tmp_path) as redis,
        postgres_redis_stack(tmp_path, workers=0, broker_url=broker_url) as stack,
    ):
        client = stack.client()
        jobs = [
            create_job(client, upload(client, hello_dataset(20)), max_steps=6)["id"]
            for _ in range(2)
        ]
        # Each answer came once its job was committed; the publishes follow on the API's thread.
        queue = stack.env["LORAFORGE_JOB_QUEUE"]
        wait_for(lambda: queued_messages(broker_url, queue) == 2, 10, "both jobs to be published")
        # Redis restarts empty (no persistence): both messages are gone.
        stop(redis, grace_s=5)
        with private_redis(port, tmp_path):
            stack.add_worker()
            for job_id in jobs:
                finished = wait_status(client, job_id, "succeeded", "failed")
                assert finished["status"] == "succeeded", finished["error"]
                assert finished["attempt"] == 1


def test_jobs_waiting_for_a_busy_worker_keep_one_message_each(tmp_path: Path):
    with postgres_redis_stack(tmp_path, workers=1) as stack:
        client = stack.client()
        training_file = upload(client, hello_dataset(20))
        busy = create_job(client, training_file, max_steps=10**5)["id"]
        wait_status(client, busy, "running")
        waiting = [create_job(client, training_file, max_steps=6)["id"] for _ in range(3)]
        broker_url, queue = stack.env["LORAFORGE_BROKER_URL"], stack.env["LORAFORGE_JOB_QUEUE"]
        wait_for(lambda: queued_messages(broker_url, queue) == 3, 10, "the three messages")
        # Reaper passes every second; each job waits past requeue_after_s (5 s) twice over.
        time.sleep(12)
        assert queued_messages(broker_url, queue) == 3
        assert job(client, busy)["status"] == "running"
        for job_id in [busy, *waiting]:
            client.post(f"/fine_tuning/jobs/{job_id}/cancel")


def test_one_message_delivered_twice_trains_once(tmp_path: Path):
    with postgres_redis_stack(tmp_path, workers=2) as stack:
        client = stack.client()
        created = create_job(client, upload(client, hello_dataset(40)), max_steps=30)
        with Connection(stack.env["LORAFORGE_BROKER_URL"]) as connection:
            from celery import Celery

            sender = Celery(broker=connection.as_uri(include_password=True))
            sender.send_task(
                TASK_RUN_JOB, args=[created["id"]], queue=stack.env["LORAFORGE_JOB_QUEUE"]
            )
        finished = wait_status(client, created["id"], "succeeded", "failed")
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["attempt"] == 1
        started = [
            e
            for e in events(client, created["id"])
            if e["message"].startswith("Fine-tuning job started")
        ]
        assert len(started) == 1
        steps = [s for s, _ in metric_steps(client, created["id"])]
        assert steps == list(range(1, 31))
        wait_for(
            lambda: (
                "duplicate or stale message"
                in (tmp_path / "worker.log").read_text(errors="replace")
            ),
            30,
            "the second delivery to be skipped",
        )


def export_status(client: httpx.Client, job_id: str, export_id: str) -> dict[str, Any]:
    data: dict[str, Any] = client.get(f"/fine_tuning/jobs/{job_id}/exports/{export_id}").json()
    return data


def export_lease(database_url: str, export_id: str) -> tuple[int, int, str | None]:
    """(attempt, lost_workers, lease_owner) of the export, from the stack's database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(Export.attempt, Export.lost_workers, Export.lease_owner).where(
                    Export.id == export_id
                )
            ).one()
    finally:
        engine.dispose()
    return row.attempt, row.lost_workers, row.lease_owner


def test_kill_9_mid_export_another_worker_builds_it(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    with postgres_redis_stack(tmp_path, workers=0) as stack:
        client = stack.client()
        stack.add_worker(stack.env["LORAFORGE_JOB_QUEUE"])
        job_id = create_job(client, upload(client, hello_dataset(20)), max_steps=6)["id"]
        trained = wait_status(client, job_id, "succeeded", "failed")
        assert trained["status"] == "succeeded", trained["error"]
        # A worker of its own for exports: the merge (and the torch stack it first loads) runs
        # for seconds there, long enough to see the export running and kill its worker.
        exporter = stack.add_worker(stack.env["LORAFORGE_EXPORT_QUEUE"])
        created = client.post(
            f"/fine_tuning/jobs/{job_id}/exports", json={"type": "merged", "dtype": "float32"}
        )
        assert created.status_code == 200, created.text
        export_id = created.json()["id"]
        seen = wait_for(
            lambda: (lambda e: e if e["status"] != "queued" else None)(
                export_status(client, job_id, export_id)
            ),
            120,
            "the export to start",
            interval=0.05,
        )
        assert seen["status"] == "running", seen
        database_url = stack.env["LORAFORGE_DATABASE_URL"]
        attempt, _, owner = export_lease(database_url, export_id)
        assert attempt == 1 and owner is not None
        assert int(owner.split(":")[1]) == exporter.pid  # host:pid:random
        os.kill(exporter.pid, signal.SIGKILL)
        exporter.wait(10)
        assert export_status(client, job_id, export_id)["status"] == "running"

        stack.add_worker(stack.env["LORAFORGE_EXPORT_QUEUE"])
        done = wait_for(
            lambda: (lambda e: e if e["status"] in ("succeeded", "failed") else None)(
                export_status(client, job_id, export_id)
            ),
            240,
            "the export to finish on the new worker",
        )
        assert done["status"] == "succeeded", done
        assert export_lease(database_url, export_id) == (2, 1, None)
        content = client.get(f"/fine_tuning/jobs/{job_id}/exports/{export_id}/content")
        assert content.status_code == 200, content.text
        with tarfile.open(fileobj=io.BytesIO(content.content), mode="r:gz") as archive:
            archive.extractall(tmp_path / "merged", filter="data")
        (merged_dir,) = (tmp_path / "merged").iterdir()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        assert not any("lora" in name for name, _ in merged.named_parameters())
        assert sorted(done["details"]["files"]) == sorted(
            p.name for p in merged_dir.iterdir() if p.name != "export.json"
        )
