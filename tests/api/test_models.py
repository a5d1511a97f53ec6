"""/v1/models: the catalog (ids with slashes), operator entries, fine-tuned models."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.main import create_app
from tests.conftest import create_job
from tests.factories import Tenant, create_tenant


def test_catalog_lists_the_builtin_tiny_model(client: TestClient, tenant_a: Tenant):
    models = client.get("/v1/models", headers=tenant_a.headers).json()
    assert models["object"] == "list"
    assert "loraforge/tiny-random-llama" in [m["id"] for m in models["data"]]
    one = client.get("/v1/models/loraforge/tiny-random-llama", headers=tenant_a.headers)
    assert one.status_code == 200
    assert one.json()["object"] == "model"
    assert one.json()["kind"] == "base"


def test_unknown_model_is_404(client: TestClient, tenant_a: Tenant):
    response = client.get("/v1/models/meta-llama/Nope-8B", headers=tenant_a.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_operator_entries_join_the_catalog(tmp_path: Path, database_url: str):
    settings = Settings(
        data_dir=tmp_path / "d",
        database_url=database_url,
        broker_url="memory://",
        models={
            "acme/llama-3-8b": {"hub_id": "meta-llama/Meta-Llama-3-8B", "revision": "abc123"},
            "local/mistral": {"path": str(tmp_path / "mistral")},
        },
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as client:
        tenant = create_tenant(client.app.state.session_factory, "acme")  # type: ignore[attr-defined]
        ids = {m["id"] for m in client.get("/v1/models", headers=tenant.headers).json()["data"]}
    assert {"acme/llama-3-8b", "local/mistral", "loraforge/tiny-random-llama"} <= ids


def test_fine_tuned_model_is_listed_and_deletable(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    name = "ft:loraforge/tiny-random-llama:acme::abcd1234"
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        job.status, job.fine_tuned_model = "succeeded", name
        session.commit()
    assert client.get(f"/v1/models/{name}", headers=tenant_a.headers).json()["parent"] == (
        "loraforge/tiny-random-llama"
    )
    deleted = client.delete(f"/v1/models/{name}", headers=tenant_a.headers).json()
    assert deleted == {"id": name, "object": "model", "deleted": True}
    assert client.get(f"/v1/models/{name}", headers=tenant_a.headers).status_code == 404
    base = client.delete("/v1/models/loraforge/tiny-random-llama", headers=tenant_a.headers)
    assert base.status_code == 403
    assert base.json()["error"]["code"] == "model_not_deletable"
