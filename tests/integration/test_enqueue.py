"""The enqueue boundary with real brokers: after POST /v1/fine_tuning/jobs commits, a Celery
message named `training.run_job` carrying the job id sits in the queue (Redis and the
embedded SQLite broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection

from app import queue
from app.config import Settings
from app.db.models import Job
from app.main import create_app
from app.queue import TASK_RUN_JOB, BrokerUnavailable, CeleryEnqueuer
from tests.conftest import create_job, upload
from tests.databases import check_redis_databases, forget_queues, redis_url, unique_name
from tests.factories import chat_dataset, create_tenant
from tests.live import closed_port

REDIS_URL = redis_url(0)


@pytest.fixture(params=["redis", "sqlite-broker"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        check_redis_databases()
        return REDIS_URL
    return f"sqla+sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    name = unique_name("training")
    yield name
    with Connection(broker_url) as connection:
        connection.SimpleQueue(name).queue.delete()
    if broker_url == REDIS_URL:
        forget_queues(REDIS_URL, [name])


def test_created_job_is_published_by_task_name(tmp_path: Path, broker_url: str, queue_name: str):
    settings = Settings(
        data_dir=tmp_path / "data",
        broker_url=broker_url,
        job_queue=queue_name,
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as client:
        tenant = create_tenant(client.app.state.session_factory, "acme")  # type: ignore[attr-defined]
        file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
        job = create_job(client, tenant, file_id).json()
    with Connection(broker_url) as connection:
        queue = connection.SimpleQueue(queue_name)
        message = queue.get(timeout=10)
        message.ack()
    assert message.headers["task"] == "training.run_job"
    args, kwargs, _embed = message.payload
    assert args == [job["id"]]
    assert kwargs == {}


@pytest.fixture
def unreachable_broker() -> Iterator[str]:
    """A Redis URL on a port that refuses connections."""
    with closed_port() as port:
        yield f"redis://127.0.0.1:{port}/0"


def test_unreachable_broker_does_not_fail_the_request(tmp_path: Path, unreachable_broker: str):
    settings = Settings(
        data_dir=tmp_path / "data",
        broker_url=unreachable_broker,
        enqueue_timeout_s=0.5,
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as client:
        tenant = create_tenant(client.app.state.session_factory, "acme")  # type: ignore[attr-defined]
        file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
        response = create_job(client, tenant, file_id)
        assert response.status_code == 200
        assert response.json()["status"] == "queued"
        with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
            job = session.get_one(Job, response.json()["id"])
            assert job.enqueued_at is None  # the reaper's signal to publish it again
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("error")


def test_after_a_failed_publish_the_next_fail_at_once_until_the_backoff_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreachable_broker: str
):
    settings = Settings(
        data_dir=tmp_path / "data",
        broker_url=unreachable_broker,
        enqueue_timeout_s=0.5,
        _env_file=None,  # type: ignore[call-arg]
    )
    enqueuer = CeleryEnqueuer(settings)
    started = time.monotonic()
    with pytest.raises(Exception) as first:
        enqueuer.send(TASK_RUN_JOB, ["ftjob-1"], "training")
    assert not isinstance(first.value, BrokerUnavailable)
    tried_for = time.monotonic() - started  # the connect attempts and their retries
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        enqueuer.send(TASK_RUN_JOB, ["ftjob-2"], "training")
    assert time.monotonic() - started < min(0.1, tried_for)
    monkeypatch.setattr(queue, "BROKER_BACKOFF_S", 0.0)  # as if the backoff had run out
    with pytest.raises(Exception) as again:
        enqueuer.send(TASK_RUN_JOB, ["ftjob-3"], "training")
    assert not isinstance(again.value, BrokerUnavailable)


def test_publishes_on_redis_reuse_the_channels_redis_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    check_redis_databases()
    name = unique_name("training")
    settings = Settings(data_dir=tmp_path, broker_url=REDIS_URL, _env_file=None)  # type: ignore[call-arg]
    enqueuer = CeleryEnqueuer(settings)
    enqueuer.send(TASK_RUN_JOB, ["ftjob-0"], name)  # connects, declares the queue
    created: list[object] = []
    original_init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    try:
        for index in range(1, 6):
            enqueuer.send(TASK_RUN_JOB, [f"ftjob-{index}"], name)
        assert created == []
        with Connection(REDIS_URL) as connection:
            queue = connection.SimpleQueue(name)
            received = []
            for _ in range(6):
                message = queue.get(timeout=10)
                message.ack()
                received.append(message.payload[0][0])
        assert sorted(received) == [f"ftjob-{index}" for index in range(6)]
    finally:
        monkeypatch.undo()
        forget_queues(REDIS_URL, [name])
