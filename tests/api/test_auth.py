"""API keys: missing, wrong and revoked keys get 401 in the OpenAI envelope."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.keycache import MAX_ENTRIES, KeyCache, Principal
from app.db.models import ApiKey
from app.services.keys import hash_key, revoke_key
from tests.factories import Tenant


def test_missing_key_is_401(client: TestClient, tenant_a: Tenant):
    response = client.get("/v1/files")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_is_401(client: TestClient, tenant_a: Tenant):
    response = client.get("/v1/files", headers={"Authorization": "Bearer lf-wrong"})
    assert response.status_code == 401


def test_a_key_under_another_scheme_is_401(client: TestClient, tenant_a: Tenant):
    for value in (f"Basic {tenant_a.key}", tenant_a.key, "Bearer "):
        response = client.get("/v1/files", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.json()["error"]["code"] == "invalid_api_key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_revoked_key_is_401_once_its_cache_entry_expires(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session]
):
    ttl = client.app.state.settings.api_key_cache_s  # type: ignore[attr-defined]
    assert ttl > 0
    clock = FakeClock()
    client.app.state.key_cache = KeyCache(ttl, clock=clock)  # type: ignore[attr-defined]
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 200
    with session_factory() as session:
        assert revoke_key(session, tenant_a.key_id)
        session.commit()
    clock.now += ttl - 0.5  # still remembered by this process
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 200
    clock.now += 0.5
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 401
    clock.now += 60  # and a refused key is never cached
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 401


def test_without_the_cache_a_revoked_key_is_401_at_once(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session]
):
    client.app.state.key_cache = KeyCache(0)  # type: ignore[attr-defined]
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 200
    with session_factory() as session:
        assert revoke_key(session, tenant_a.key_id)
        session.commit()
    assert client.get("/v1/files", headers=tenant_a.headers).status_code == 401


def test_key_cache_stays_bounded() -> None:
    clock = FakeClock()
    cache = KeyCache(5, clock=clock)
    for i in range(MAX_ENTRIES + 10):
        cache.put(f"d{i}", Principal(key_id=f"key-{i}", organization_id="org"))
    assert len(cache._entries) <= MAX_ENTRIES
    assert cache.get(f"d{MAX_ENTRIES + 9}") == Principal(f"key-{MAX_ENTRIES + 9}", "org")


def test_only_the_hash_prefix_and_last_four_are_stored(
    tenant_a: Tenant, session_factory: sessionmaker[Session]
):
    with session_factory() as session:
        record = session.scalars(select(ApiKey).where(ApiKey.id == tenant_a.key_id)).one()
        stored = [str(v) for v in record.__dict__.values()]
    assert tenant_a.key not in stored
    assert record.key_hash == hash_key(tenant_a.key)
    assert record.last4 == tenant_a.key[-4:]
    assert tenant_a.key.startswith(record.prefix)


def test_health_needs_no_key(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_declares_the_bearer_scheme_on_every_route_that_checks_a_key(client: TestClient):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `loraforge keys create`",
        }
    }
    secured = {
        (method, path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"HTTPBearer": []}]
    }
    assert ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}") in secured
    assert ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events") in secured
    assert ("post", "/v1/fine_tuning/jobs") in secured
    assert ("get", "/healthz") not in secured
    for path, item in schema["paths"].items():
        for method in item:
            if path.startswith("/v1/"):
                assert (method, path) in secured
