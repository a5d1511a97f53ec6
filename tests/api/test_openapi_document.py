"""The API answers as its OpenAPI document says: 400 (never 422) for a request that fails its
schema, 405 with every method of the path in `Allow`, links for stateful clients."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import Tenant


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/files", "GET, POST"),
        ("PATCH", "/v1/files/file-x", "DELETE, GET"),
        ("OPTIONS", "/v1/models/loraforge/tiny-random-llama", "DELETE, GET"),
        ("DELETE", "/v1/fine_tuning/jobs/ftjob-x/exports", "GET, POST"),
        ("GET", "/v1/uploads/upload-x/complete", "POST"),
    ],
)
def test_a_405_lists_every_method_the_path_serves(
    client: TestClient, tenant_a: Tenant, method: str, path: str, allowed: str
):
    response = client.request(method, path, headers=tenant_a.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_a_request_failing_its_schema_is_a_400_in_openais_envelope(
    client: TestClient, tenant_a: Tenant
):
    response = client.get("/v1/fine_tuning/jobs?limit=many", headers=tenant_a.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request_body",
        "limit",
    )
    assert error["details"][0]["loc"] == ["query", "limit"]


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    return [
        (method.upper(), path, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_document_declares_400_and_never_422(client: TestClient):
    schema = client.app.openapi()  # type: ignore[attr-defined]
    for method, path, operation in operations(client):
        assert "422" not in operation["responses"], (method, path)
        if path.startswith("/v1/"):
            assert "400" in operation["responses"], (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_no_parameter_is_declared_nullable(client: TestClient):
    """A query or header parameter is left out to say "none"; it cannot be null."""
    for method, path, operation in operations(client):
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (method, path, parameter["name"])


def test_objects_link_to_the_operations_that_take_their_ids(client: TestClient):
    by_id = {operation["operationId"]: (m, p) for m, p, operation in operations(client)}
    schema = client.app.openapi()  # type: ignore[attr-defined]
    created = schema["paths"]["/v1/uploads"]["post"]["responses"]["200"]["links"]
    assert {by_id[name] for name in created} == {
        ("POST", "/v1/uploads/{upload_id}/parts"),
        ("POST", "/v1/uploads/{upload_id}/complete"),
        ("POST", "/v1/uploads/{upload_id}/cancel"),
    }
    listed = schema["paths"]["/v1/files"]["get"]["responses"]["200"]["links"]
    assert ("DELETE", "/v1/files/{file_id}") in {by_id[name] for name in listed}
    for link in listed.values():
        assert link["parameters"] == {"file_id": "$response.body#/data/0/id"}
