"""Tenant isolation, generated from the route table: every route that takes an id is called
by tenant B with tenant A's ids and must answer 404, leaving A's rows as they were.

A new route whose path parameter is not in ID_FIXTURES fails here until it is added."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import Base
from app.db.models import Job
from tests.conftest import create_job, upload
from tests.factories import Tenant, add_checkpoint, add_export, chat_dataset

# Columns that legitimately change when A is not the caller: none of A's, but B's key use.
VOLATILE = {("api_key", "last_used_at")}


def seed_tenant_a(
    client: TestClient, tenant: Tenant, factory: sessionmaker[Session]
) -> dict[str, str]:
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    job_id = create_job(client, tenant, file_id, suffix="secret").json()["id"]
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.status = "succeeded"
        job.fine_tuned_model = f"ft:loraforge/tiny-random-llama:acme:secret:{job_id[6:14]}"
        checkpoint = add_checkpoint(session, job, 10, 1.0)
        export = add_export(session, job)
        session.commit()
        return {
            "file_id": file_id,
            "fine_tuning_job_id": job_id,
            "model": job.fine_tuned_model,
            "checkpoint_id": checkpoint.id,
            "export_id": export.id,
        }


def snapshot(factory: sessionmaker[Session], organization_id: str) -> dict[str, list[Any]]:
    """Every row of every tenant table belonging to the organization."""
    rows: dict[str, list[Any]] = {}
    with factory() as session:
        for table in Base.metadata.sorted_tables:
            if "organization_id" not in table.c:
                continue
            result = session.execute(
                select(table).where(table.c.organization_id == organization_id)
            )
            rows[table.name] = sorted(
                (
                    tuple(
                        (k, v) for k, v in row._mapping.items() if (table.name, k) not in VOLATILE
                    )
                    for row in result
                ),
                key=repr,
            )
    return rows


def id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameters) of every operation that takes an id."""
    routes = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method, operation in operations.items():
            params = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            if params:
                routes.append((method.upper(), path, params))
    return routes


def test_every_route_with_an_id_answers_404_to_another_tenant(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
):
    ids = seed_tenant_a(client, tenant_a, session_factory)
    before = snapshot(session_factory, tenant_a.organization_id)
    routes = id_routes(client)
    assert len(routes) >= 10
    for method, path, params in routes:
        unknown = [p for p in params if p not in ids]
        assert not unknown, f"{method} {path}: add {unknown} to the isolation seed"
        url = path
        for param in params:
            url = url.replace("{" + param + "}", ids[param])
        response = client.request(
            method, url, headers=tenant_b.headers, json={} if method == "POST" else None
        )
        assert response.status_code == 404, f"{method} {path}: {response.status_code}"
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert snapshot(session_factory, tenant_a.organization_id) == before
    # And the owner still sees everything.
    assert client.get(f"/v1/files/{ids['file_id']}", headers=tenant_a.headers).status_code == 200


@pytest.mark.parametrize("path", ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models"])
def test_lists_never_show_another_tenants_objects(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
    path: str,
):
    ids = seed_tenant_a(client, tenant_a, session_factory)
    listed = {item["id"] for item in client.get(path, headers=tenant_b.headers).json()["data"]}
    assert not listed & set(ids.values())
    own = {item["id"] for item in client.get(path, headers=tenant_a.headers).json()["data"]}
    assert own & set(ids.values())


def test_cursor_from_another_tenant_is_refused(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
):
    ids = seed_tenant_a(client, tenant_a, session_factory)
    response = client.get(f"/v1/files?after={ids['file_id']}", headers=tenant_b.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"
