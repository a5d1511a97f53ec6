"""Tenant isolation, generated from the route table: every route that takes an id is called
by tenant B with tenant A's ids and must answer 404, leaving A's rows as they were.

A new route whose path parameter is not in ID_FIXTURES fails here until it is added."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import Base
from app.db.models import Job
from tests.conftest import create_job, upload
from tests.factories import Tenant, add_checkpoint, add_export, chat_dataset
from tests.hardening.seed import MODEL, Seeded, seed_organization, seed_webhook

# Columns that legitimately change when A is not the caller: none of A's, but B's key use.
VOLATILE = {("api_key", "last_used_at")}
# Routes with a path parameter that serve no tenant's data, and why.
NO_TENANT_DATA = {"/ui/{name}": "the dashboard's static assets, the same for everyone"}


def seed_tenant_a(
    client: TestClient, tenant: Tenant, factory: sessionmaker[Session]
) -> dict[str, str]:
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    job_id = create_job(client, tenant, file_id, suffix="secret").json()["id"]
    pending = client.post(
        "/v1/uploads",
        headers=tenant.headers,
        json={
            "filename": "t.jsonl",
            "purpose": "fine-tune",
            "bytes": 10,
            "mime_type": "text/jsonl",
        },
    ).json()
    part = client.post(
        f"/v1/uploads/{pending['id']}/parts",
        headers=tenant.headers,
        files={"data": ("blob", b"01234", "application/octet-stream")},
    ).json()
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.status = "succeeded"
        job.fine_tuned_model = f"ft:loraforge/tiny-random-llama:acme:secret:{job_id[6:14]}"
        checkpoint = add_checkpoint(session, job, 10, 1.0)
        export = add_export(session, job)
        webhook = seed_webhook(session, tenant.organization_id)
        session.commit()
        return {
            "file_id": file_id,
            "fine_tuning_job_id": job_id,
            "model": job.fine_tuned_model,
            "checkpoint_id": checkpoint.id,
            "export_id": export.id,
            "upload_id": pending["id"],
            "part_id": part["id"],
            "webhook_id": webhook.id,
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
    """(method, path template, path parameters) of every route that takes an id: the whole
    route table, routes left out of the OpenAPI schema included."""
    routes = []
    for route in all_routes(client.app.routes):  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute) or route.path_format in NO_TENANT_DATA:
            continue
        params = list(route.param_convertors)
        for method in sorted((route.methods or set()) - {"HEAD"}) if params else ():
            routes.append((method, route.path_format, params))
    return routes


def all_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps those as nested route lists)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from all_routes(included.routes) if included is not None else [route]


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


def test_cursor_from_another_tenant_names_no_object(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
):
    ids = seed_tenant_a(client, tenant_a, session_factory)
    response = client.get(f"/v1/files?after={ids['file_id']}", headers=tenant_b.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "cursor_not_found"


def test_another_tenants_child_ids_under_an_own_job_answer_404(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
    settings: Settings,
):
    """The child lookup checks the tenant too: B's own job with A's checkpoint or export."""
    ids = seed_tenant_a(client, tenant_a, session_factory)
    own = seed_organization(session_factory, settings.data_dir, tenant_b.organization_id)
    before = snapshot(session_factory, tenant_a.organization_id)
    nested = [(m, path, params) for m, path, params in id_routes(client) if len(params) > 1]
    assert nested
    for method, path, params in nested:
        url = path.replace("{fine_tuning_job_id}", own.succeeded_job_id)
        for param in params:
            url = url.replace("{" + param + "}", ids[param])
        response = client.request(method, url, headers=tenant_b.headers)
        assert response.status_code == 404, f"{method} {path}: {response.status_code}"
    assert snapshot(session_factory, tenant_a.organization_id) == before


def body_references(client: TestClient) -> list[tuple[str, str]]:
    """(path, field) of every JSON body field that names another object."""
    schema = client.app.openapi()  # type: ignore[attr-defined]
    found = []
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref")
            if ref is None:
                continue
            properties = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
            for field in properties:
                if field.endswith(("_file", "_id", "_ids")):
                    assert field in BODY_REFERENCES, f"{path}: add {field!r} to BODY_REFERENCES"
                    found.append((path, field))
    return found


# Body fields that name a tenant's object, and the error code a stranger's id gets.
BODY_REFERENCES = {
    "training_file": "file_not_found",
    "validation_file": "file_not_found",
    "part_ids": "part_not_found",
}


def stranger_request(
    path: str, field: str, ids: dict[str, str], own: Seeded
) -> tuple[str, dict[str, Any]]:
    """B's request naming A's object in `field`, everything else B's own."""
    if field == "part_ids":  # B completes its own upload with A's part
        return path.replace("{upload_id}", own.upload_id), {"part_ids": [ids["part_id"]]}
    return path, {"model": MODEL, "training_file": own.file_id, field: ids["file_id"]}


def test_body_fields_naming_another_tenants_file_are_refused(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
    settings: Settings,
):
    ids = seed_tenant_a(client, tenant_a, session_factory)
    own = seed_organization(session_factory, settings.data_dir, tenant_b.organization_id)
    before_a = snapshot(session_factory, tenant_a.organization_id)
    before_b = snapshot(session_factory, tenant_b.organization_id)
    references = body_references(client)
    assert {field for _, field in references} == set(BODY_REFERENCES)
    for path, field in references:
        url, body = stranger_request(path, field, ids, own)
        response = client.post(url, headers=tenant_b.headers, json=body)
        assert response.status_code in (400, 404), f"{path} {field}: {response.status_code}"
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (BODY_REFERENCES[field], field), path
    assert snapshot(session_factory, tenant_a.organization_id) == before_a
    assert snapshot(session_factory, tenant_b.organization_id) == before_b


def test_list_cursors_never_page_from_another_tenants_objects(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    session_factory: sessionmaker[Session],
    settings: Settings,
):
    """Every list with an `after` cursor, fed A's ids by B: refused, or only B's objects."""
    ids = seed_tenant_a(client, tenant_a, session_factory)
    own = seed_organization(session_factory, settings.data_dir, tenant_b.organization_id)
    own_ids = {"fine_tuning_job_id": own.succeeded_job_id, "webhook_id": own.webhook_id}
    schema = client.app.openapi()  # type: ignore[attr-defined]
    lists = [
        path
        for path, operations in schema["paths"].items()
        if any(p["name"] == "after" for p in operations.get("get", {}).get("parameters", []))
    ]
    assert len(lists) >= 5
    for path in lists:
        url = path
        for param, value in own_ids.items():
            url = url.replace("{" + param + "}", value)
        for cursor in ids.values():
            response = client.get(url, params={"after": cursor}, headers=tenant_b.headers)
            assert response.status_code in (200, 404), f"{path}: {response.status_code}"
            if response.status_code == 404:
                assert response.json()["error"]["code"] == "cursor_not_found"
            else:
                listed = {item["id"] for item in response.json()["data"]}
                assert not listed & set(ids.values()), path
