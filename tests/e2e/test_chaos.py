"""Chaos with real processes: a Redis restart that loses queued messages, and one message
delivered twice to two workers."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError

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
