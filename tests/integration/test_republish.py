"""The reaper against real brokers (Redis and the embedded SQLite broker), no worker consuming:
however many passes run, the queue holds one message per queued job, and what the broker
lost is published again."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from kombu.exceptions import ChannelError
from kombu.simple import SimpleQueue

from app.config import Settings
from app.main import create_app
from app.queue import CeleryEnqueuer
from tests.conftest import create_job, upload
from tests.databases import redis_url
from tests.factories import Tenant, chat_dataset, create_tenant
from worker.reaper import reap_once

REQUEUE_AFTER_S = 1.0


@pytest.fixture(params=["redis", "sqlite-broker"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return redis_url(0)
    return f"sqla+sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, broker_url: str) -> Iterator[Settings]:
    queue = f"test-training-{secrets.token_hex(4)}"
    yield Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=broker_url,
        job_queue=queue,
        requeue_after_s=REQUEUE_AFTER_S,
        _env_file=None,  # type: ignore[call-arg]
    )
    with Connection(broker_url) as connection:
        connection.SimpleQueue(queue).queue.delete()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def queued_jobs(client: TestClient, count: int) -> list[str]:
    """`count` jobs created through the API, each published once by it."""
    tenant: Tenant = create_tenant(client.app.state.session_factory, "acme")  # type: ignore[attr-defined]
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    return [create_job(client, tenant, file_id).json()["id"] for _ in range(count)]


def reap(client: TestClient, settings: Settings, passes: int = 1) -> None:
    enqueuer = CeleryEnqueuer(settings)
    for _ in range(passes):
        reap_once(client.app.state.session_factory, settings, enqueuer)  # type: ignore[attr-defined]


def waiting(settings: Settings) -> int:
    """Messages in the job queue; 0 when Redis has no such key (an empty queue)."""
    with Connection(settings.resolved_broker_url()) as connection:
        try:
            return connection.SimpleQueue(settings.job_queue).qsize()
        except ChannelError:
            return 0


def drain(queue: SimpleQueue) -> list[str]:
    """The job id of every message left in `queue`, oldest first."""
    ids = []
    while True:
        try:
            message = queue.get(timeout=1)
        except queue.Empty:
            return ids
        message.ack()
        ids.append(message.payload[0][0])


def test_passes_past_requeue_after_leave_one_message_per_queued_job(
    client: TestClient, settings: Settings
):
    jobs = queued_jobs(client, 3)
    time.sleep(REQUEUE_AFTER_S + 0.2)  # every job now waits longer than requeue_after_s
    reap(client, settings, passes=5)
    assert waiting(settings) == 3
    with Connection(settings.resolved_broker_url()) as connection:
        assert sorted(drain(connection.SimpleQueue(settings.job_queue))) == sorted(jobs)


def test_messages_the_broker_lost_are_published_again_once_stale(
    client: TestClient, settings: Settings
):
    jobs = queued_jobs(client, 3)
    with Connection(settings.resolved_broker_url()) as connection:
        queue = connection.SimpleQueue(settings.job_queue)
        queue.clear()  # the broker loses every message
        reap(client, settings)
        assert waiting(settings) == 0  # not yet: published under requeue_after_s ago
        time.sleep(REQUEUE_AFTER_S + 0.2)
        reap(client, settings, passes=3)
        assert waiting(settings) == 3
        queue.get(timeout=5).ack()  # one more lost: taken, and its job never claimed
        time.sleep(REQUEUE_AFTER_S + 0.2)
        reap(client, settings, passes=3)
        assert sorted(drain(queue)) == sorted(jobs)
