"""What must never leave the server: storage paths and keys, lease owners, key hashes, and
the API keys themselves (in no response, and in no log line, of the API or of the CLI)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import ApiKey, Checkpoint, Export, File, WebhookEndpoint
from tests.conftest import upload
from tests.factories import Tenant, chat_dataset
from tests.hardening.seed import LEASE_OWNER, MODEL, Seeded, seed_organization
from tests.live import loraforge

# Names of server-side columns that no response may carry.
SECRET_FIELDS = ("storage_key", "lease_owner", "lease_expires_at", "key_hash", "revoked_at")


def secrets_of(
    factory: sessionmaker[Session], settings: Settings, tenants: list[Tenant]
) -> list[str]:
    """Every value that must not appear in a response."""
    with factory() as session:
        keys = [
            key
            for model in (File, Checkpoint, Export)
            for key in session.scalars(select(model.storage_key))
            if key
        ]
        hashes = list(session.scalars(select(ApiKey.key_hash)))
        signing_secrets = list(session.scalars(select(WebhookEndpoint.secret)))
    data_dir = [str(settings.data_dir), str(settings.data_dir.resolve())]
    return [
        *keys,
        *hashes,
        *signing_secrets,
        *data_dir,
        LEASE_OWNER,
        *(t.key for t in tenants),
        *SECRET_FIELDS,
    ]


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    return [
        (method.upper(), path, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def fill(path: str, seeded: Seeded) -> str:
    names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
    ids = next((ids for ids in seeded.path_ids() if names <= set(ids)), {})
    for name in names:
        path = path.replace("{" + name + "}", ids[name])
    return path


def request_body(path: str, seeded: Seeded) -> dict[str, Any]:
    if path.endswith("/exports"):
        return {"json": {"type": "merged"}}
    if path == "/v1/files":
        return {"files": {"file": ("t.jsonl", chat_dataset(12))}, "data": {"purpose": "fine-tune"}}
    return {"json": {"model": MODEL, "training_file": seeded.file_id, "suffix": "leak"}}


def call_every_operation(client: TestClient, tenant: Tenant, seeded: Seeded) -> list[Any]:
    """Each operation with real ids (successes), then with unknown ids (errors); reads first,
    then writes, deletes last."""
    order = {"GET": 0, "POST": 1, "DELETE": 2}
    responses = []
    for method, path, _ in sorted(operations(client), key=lambda op: order.get(op[0], 1)):
        body = request_body(path, seeded) if method == "POST" else {}
        responses.append(client.request(method, fill(path, seeded), headers=tenant.headers, **body))
        if "{" in path:
            unknown = path.replace("{", "").replace("}", "-unknown")
            responses.append(client.request(method, unknown, headers=tenant.headers, **body))
    return responses


def test_no_response_shows_paths_lease_owners_key_hashes_or_keys(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    seeded = seed_organization(session_factory, settings.data_dir, tenant_a.organization_id)
    responses = call_every_operation(client, tenant_a, seeded)
    responses += [client.get("/openapi.json"), client.get("/v1/files", headers=tenant_b.headers)]
    statuses = {r.status_code for r in responses}
    assert 200 in statuses and 404 in statuses and all(s < 500 for s in statuses), statuses
    forbidden = secrets_of(session_factory, settings, [tenant_a, tenant_b])
    for response in responses:
        shown = str(response.headers)
        if not response.headers.get("content-type", "").startswith("application/gzip"):
            shown += response.text
        leaked = [secret for secret in forbidden if secret in shown]
        assert not leaked, f"{response.request.method} {response.request.url}: {leaked}"


def test_api_keys_never_reach_the_log(
    client: TestClient, tenant_a: Tenant, caplog: pytest.LogCaptureFixture
):
    wrong = "lf-wrong-key-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        upload(client, tenant_a, chat_dataset(12))
        upload(client, tenant_a, b"not json\n")
        client.get("/v1/files", headers={"Authorization": f"Bearer {wrong}"})
        client.get("/v1/files", headers={"Authorization": wrong})
        client.post("/v1/fine_tuning/jobs", headers=tenant_a.headers, json={"bad": 1})
        client.get("/v1/fine_tuning/jobs/ftjob-none", headers=tenant_a.headers)
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for secret in (tenant_a.key, wrong):
        assert secret not in caplog.text


@pytest.mark.slow
def test_the_cli_prints_a_new_key_once_on_stdout_and_nowhere_else(tmp_path: Path):
    env = {"LORAFORGE_DATA_DIR": str(tmp_path / "data")}
    created = loraforge(env, "keys", "create", "--org", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lf-") and created.stdout.count("\n") == 1
    assert key not in created.stderr
    listed = loraforge(env, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout + listed.stderr
    assert f"{key[:7]}...{key[-4:]}" in listed.stdout
