"""Mass assignment: a body can set only what the client owns. Unknown fields and the fields the
server owns (organization, status, attempt, fine_tuned_model...) are refused with 400 on every
route that takes a JSON body, at every depth, and nothing is created."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Export, Job, Upload
from tests.factories import Tenant, set_job_status

# Fields of the objects the server returns that a client must never set.
SERVER_OWNED = [
    "id",
    "object",
    "organization_id",
    "status",
    "attempt",
    "fine_tuned_model",
    "trained_tokens",
    "result_files",
    "created_at",
    "finished_at",
    "error",
    "queue",
    "lease_owner",
    "storage_key",
    "cancel_requested",
    "details",
]
# Maps of arbitrary keys by design: the client's own labels (a job's metadata, the tags of
# its MLflow run).
FREE_FORM = {"metadata", "tags"}


def json_bodies(client: TestClient) -> dict[str, dict[str, Any]]:
    """Path -> the resolved JSON schema of its request body, for every JSON-body operation."""
    schema = client.app.openapi()  # type: ignore[attr-defined]
    found = {}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                found[path] = content["application/json"]["schema"]
    return found


def object_schemas(
    node: Any, components: dict[str, Any], where: str = "body"
) -> list[tuple[str, Any]]:
    """Every object schema reachable from `node`, with the path that leads to it."""
    if isinstance(node, list):
        return [
            item
            for i, child in enumerate(node)
            for item in object_schemas(child, components, where)
        ]
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        return object_schemas(components[node["$ref"].rsplit("/", 1)[1]], components, where)
    found = [(where, node)] if node.get("type") == "object" or "properties" in node else []
    for key, child in node.items():
        if key == "properties":
            for name, field in child.items():
                if name not in FREE_FORM:
                    found += object_schemas(field, components, f"{where}.{name}")
        elif key in ("anyOf", "oneOf", "allOf", "items"):
            found += object_schemas(child, components, where)
    return found


def test_every_body_object_forbids_unknown_fields(client: TestClient):
    components = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    bodies = json_bodies(client)
    assert len(bodies) >= 3
    for path, body in bodies.items():
        for where, schema in object_schemas(body, components):
            assert schema.get("additionalProperties") is False, f"{path} {where} takes any field"


@pytest.fixture
def succeeded_job(
    client: TestClient, tenant_a: Tenant, training_file: str, session_factory: sessionmaker[Session]
) -> str:
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file}
    job_id = str(
        client.post("/v1/fine_tuning/jobs", headers=tenant_a.headers, json=body).json()["id"]
    )
    set_job_status(session_factory, job_id, "succeeded")
    return job_id


UPLOAD = {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}


@pytest.fixture
def upload_id(client: TestClient, tenant_a: Tenant) -> str:
    return str(client.post("/v1/uploads", headers=tenant_a.headers, json=UPLOAD).json()["id"])


def valid_bodies(
    training_file: str, job_id: str, upload_id: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Path template -> (URL, a body the route accepts)."""
    job = {"model": "loraforge/tiny-random-llama", "training_file": training_file}
    return {
        "/v1/fine_tuning/jobs": ("/v1/fine_tuning/jobs", job),
        "/v1/fine_tuning/estimates": ("/v1/fine_tuning/estimates", job),
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports": (
            f"/v1/fine_tuning/jobs/{job_id}/exports",
            {"type": "merged"},
        ),
        "/v1/uploads": ("/v1/uploads", UPLOAD),
        "/v1/uploads/{upload_id}/complete": (
            f"/v1/uploads/{upload_id}/complete",
            {"part_ids": []},
        ),
        "/v1/chat/completions": (
            "/v1/chat/completions",
            {
                "model": "loraforge/tiny-random-llama",
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        "/v1/completions": (
            "/v1/completions",
            {"model": "loraforge/tiny-random-llama", "prompt": "hi"},
        ),
        "/v1/webhooks": ("/v1/webhooks", {"url": "https://8.8.8.8/hooks"}),
    }


def counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with factory() as session:
        return (
            int(session.scalar(select(func.count(Job.id))) or 0),
            int(session.scalar(select(func.count(Export.id))) or 0),
            int(session.scalar(select(func.count(Upload.id))) or 0),
        )


def test_server_owned_and_unknown_fields_are_refused_on_every_json_route(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    succeeded_job: str,
    upload_id: str,
    session_factory: sessionmaker[Session],
):
    bodies = valid_bodies(training_file, succeeded_job, upload_id)
    assert set(json_bodies(client)) == set(bodies), "add the new route's body to valid_bodies"
    before = counts(session_factory)
    for url, body in bodies.values():
        for field in [*SERVER_OWNED, "unknown_field"]:
            response = client.post(url, headers=tenant_a.headers, json={**body, field: "x"})
            assert response.status_code == 400, (url, field, response.status_code)
            error = response.json()["error"]
            assert (error["param"], error["code"]) == (field, "invalid_request_body"), (url, field)
    assert counts(session_factory) == before


@pytest.mark.parametrize(
    "nested",
    [
        {"lora": {"r": 8, "organization_id": "x"}},
        {"quantization": {"bits": 4, "status": "succeeded"}},
        {"training": {"max_steps": 3, "attempt": 9}},
        {"method": {"type": "supervised", "fine_tuned_model": "ft:x"}},
        {"method": {"supervised": {"hyperparameters": {"n_epochs": 1, "trained_tokens": 5}}}},
        {"hyperparameters": {"n_epochs": 1, "lease_owner": "me"}},
    ],
    ids=["lora", "quantization", "training", "method", "hyperparameters", "deprecated-hp"],
)
def test_server_owned_fields_are_refused_at_every_depth(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
    nested: dict[str, Any],
):
    before = counts(session_factory)
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file, **nested}
    response = client.post("/v1/fine_tuning/jobs", headers=tenant_a.headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["type"] == "extra_forbidden"
    assert counts(session_factory) == before


def test_a_created_job_belongs_to_the_caller_whatever_the_body_says(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, training_file: str
):
    body = {
        "model": "loraforge/tiny-random-llama",
        "training_file": training_file,
        "metadata": {"organization_id": tenant_b.organization_id, "status": "succeeded"},
    }
    response = client.post("/v1/fine_tuning/jobs", headers=tenant_a.headers, json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["organization_id"] == tenant_a.organization_id
    assert (job["status"], job["attempt"], job["fine_tuned_model"]) == ("queued", 0, None)
    assert job["metadata"] == body["metadata"]  # only labels, stored as given
