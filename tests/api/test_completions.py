"""Chat and completions through the API: which names an organization may call, and the proxy
to the inference server of the model's base (here a real `loraforge inference` app, reached
through httpx's ASGI transport)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.main import create_app
from tests.conftest import RecordingEnqueuer, create_job, upload
from tests.factories import Tenant, add_checkpoint, chat_dataset, create_tenant
from tests.worker.inference.adapters import make_adapter
from worker.inference.server import create_inference_app

BASE = "loraforge/tiny-random-llama"
MESSAGES = [{"role": "user", "content": "Say hello number 2"}]


@dataclass
class Served:
    client: TestClient
    inference: Any
    factory: sessionmaker[Session]
    tenant: Tenant
    other: Tenant
    model: str
    checkpoint: str


def serve_with_inference(settings: Settings, **overrides: Any) -> tuple[TestClient, Any]:
    """The API, its inference backend a real inference app in this process (the caller
    leaves the client's context)."""
    settings = settings.model_copy(update={"inference_url": "http://inference", **overrides})
    inference = create_inference_app(settings)
    transport = httpx.ASGITransport(app=inference)
    app = create_app(settings, RecordingEnqueuer(), inference_transport=transport)
    client = TestClient(app)
    client.__enter__()
    return client, inference


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    client, inference = serve_with_inference(settings)
    factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    tenant, other = create_tenant(factory, "acme"), create_tenant(factory, "globex")
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    job_id = create_job(client, tenant, file_id, suffix="hello").json()["id"]
    models = settings.data_dir / "models"
    make_adapter(models, settings.data_dir / "jobs" / job_id / "adapter", seed=1)
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.status, job.fine_tuned_model = "succeeded", f"ft:{BASE}:acme:hello:{job_id[-8:]}"
        checkpoint = add_checkpoint(session, job, step=5, train_loss=1.0)
        checkpoint.fine_tuned_model_checkpoint = f"{job.fine_tuned_model}:ckpt-step-5"
        session.commit()
        model, checkpoint_name = job.fine_tuned_model, checkpoint.fine_tuned_model_checkpoint
        make_adapter(models, settings.data_dir / checkpoint.storage_key / "adapter", seed=2)
    try:
        yield Served(client, inference, factory, tenant, other, model, checkpoint_name)
    finally:
        client.__exit__(None, None, None)


def chat(served: Served, model: str, tenant: Tenant | None = None, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": 12, **fields}
    headers = (tenant or served.tenant).headers
    return served.client.post("/v1/chat/completions", headers=headers, json=body)


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_base_fine_tuned_and_checkpoint_models_answer_each_with_their_weights(served: Served):
    answers = {
        name: text_of(chat(served, name)) for name in (BASE, served.model, served.checkpoint)
    }
    assert len(set(answers.values())) == 3, answers
    assert chat(served, served.model).json()["model"] == served.model
    # The adapters were loaded on demand, under the tenant's names.
    listed = TestClient(served.inference).get("/v1/models").json()["data"]
    assert {served.model, served.checkpoint} <= {m["id"] for m in listed}


def test_another_organizations_model_is_not_found_like_a_missing_one(served: Served):
    theirs = chat(served, served.model, tenant=served.other)
    missing = chat(served, served.model + "x", tenant=served.other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"
    assert chat(served, served.checkpoint, tenant=served.other).status_code == 404


def test_a_deleted_fine_tuned_model_stops_answering(served: Served):
    deleted = served.client.delete(f"/v1/models/{served.model}", headers=served.tenant.headers)
    assert deleted.status_code == 200
    assert chat(served, served.model).status_code == 404


def test_completions_answer_and_the_token_cap_holds(settings: Settings):
    client, _ = serve_with_inference(settings, inference_max_tokens=4)
    try:
        tenant = create_tenant(client.app.state.session_factory, "acme")  # type: ignore[attr-defined]
        body = {"model": BASE, "prompt": "Hello", "max_tokens": 50, "temperature": 0}
        response = client.post("/v1/completions", headers=tenant.headers, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "text_completion"
        assert response.json()["usage"]["completion_tokens"] <= 4
        assert response.json()["choices"][0]["finish_reason"] == "length"
    finally:
        client.__exit__(None, None, None)


def test_an_organizations_generations_past_the_bound_are_429(served: Served):
    slots = served.client.app.state.generation_slots  # type: ignore[attr-defined]
    for _ in range(slots.per_organization):
        slots.take(served.tenant.organization_id)
    refused = chat(served, BASE)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
    assert chat(served, BASE, tenant=served.other).status_code == 200
    for _ in range(slots.per_organization):
        slots.give_back(served.tenant.organization_id)
    assert chat(served, BASE).status_code == 200
    assert slots.taken(served.tenant.organization_id) == 0


def test_without_an_inference_server_chat_is_503(settings: Settings, tmp_path: Path):
    for url in ("", "http://127.0.0.1:9"):  # none configured; nothing listening
        app = create_app(settings.model_copy(update={"inference_url": url}), RecordingEnqueuer())
        with TestClient(app) as client:
            tenant = create_tenant(app.state.session_factory, f"acme{len(url)}")
            body = {"model": BASE, "messages": MESSAGES}
            response = client.post("/v1/chat/completions", headers=tenant.headers, json=body)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "inference_unavailable"
            assert app.state.generation_slots.taken(tenant.organization_id) == 0
