"""Shared fixtures: a database of each kind, settings, an app with a recording enqueuer,
and API keys for two tenants."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.config import Settings
from app.db.models import Export, Job
from app.main import create_app
from app.queue import TASK_RUN_EXPORT
from tests.databases import database
from tests.factories import Tenant, chat_dataset, create_tenant


@dataclass
class Sent:
    task_name: str
    args: list[Any]
    queue: str
    committed_status: str | None


@dataclass
class RecordingEnqueuer:
    """Records what would be published, and what another session sees at that moment."""

    factory: sessionmaker[Session] | None = None
    sent: list[Sent] = field(default_factory=list)
    fail: bool = False
    # Runs after a send, as a worker that took the message at once would.
    after_send: Callable[[list[Any]], None] | None = None

    def send(self, task_name: str, args: list[Any], queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        status = None
        if self.factory is not None:
            table = Export if task_name == TASK_RUN_EXPORT else Job
            with self.factory() as session:
                status = session.scalar(select(table.status).where(table.id == args[0]))
        self.sent.append(Sent(task_name, args, queue, status))
        if self.after_send is not None:
            self.after_send(args)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url="memory://",
        max_upload_bytes=64 * 1024,
        min_training_examples=10,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def enqueuer() -> RecordingEnqueuer:
    return RecordingEnqueuer()


@pytest.fixture
def client(settings: Settings, enqueuer: RecordingEnqueuer) -> Iterator[TestClient]:
    app = create_app(settings, enqueuer=enqueuer)
    enqueuer.factory = app.state.session_factory
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def session_factory(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    return factory


@pytest.fixture
def tenant_a(session_factory: sessionmaker[Session]) -> Tenant:
    return create_tenant(session_factory, "acme")


@pytest.fixture
def tenant_b(session_factory: sessionmaker[Session]) -> Tenant:
    return create_tenant(session_factory, "globex")


def upload(
    client: TestClient,
    tenant: Tenant,
    content: bytes,
    filename: str = "train.jsonl",
    purpose: str = "fine-tune",
) -> Any:
    return client.post(
        "/v1/files",
        headers=tenant.headers,
        files={"file": (filename, content, "application/jsonl")},
        data={"purpose": purpose},
    )


@pytest.fixture
def training_file(client: TestClient, tenant_a: Tenant) -> str:
    response = upload(client, tenant_a, chat_dataset(12))
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def published(client: TestClient) -> None:
    """Wait until the app's publishing thread has published the new jobs created so far."""
    client.app.state.publisher.submit(lambda: None).result(timeout=10)  # type: ignore[attr-defined]


def post_job(client: TestClient, tenant: Tenant, training_file: str, **fields: Any) -> Any:
    """POST a job; the answer comes before the job is published."""
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file, **fields}
    return client.post("/v1/fine_tuning/jobs", headers=tenant.headers, json=body)


def create_job(client: TestClient, tenant: Tenant, training_file: str, **fields: Any) -> Any:
    """POST a job, then wait for its publish: what a test checks next then sees it done."""
    response = post_job(client, tenant, training_file, **fields)
    published(client)
    return response
