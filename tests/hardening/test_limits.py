"""Limits: a rate limit per API key (429 with Retry-After), quotas per organization (jobs at
once, stored bytes, files) with errors that say which and why, and a maximum page size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import MAX_PAGE_SIZE
from app.api.ratelimit import RateLimiter
from app.api.routes.files import MAX_FILES_PAGE
from app.config import Settings
from app.errors import RateLimited
from app.main import create_app
from tests.conftest import RecordingEnqueuer, create_job, upload
from tests.factories import Tenant, chat_dataset, create_tenant, set_job_status

MakeClient = Callable[..., tuple[TestClient, Tenant]]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """An app with some settings changed, and a tenant's key for it."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> tuple[TestClient, Tenant]:
            app = create_app(settings.model_copy(update=overrides), enqueuer=RecordingEnqueuer())
            client = stack.enter_context(TestClient(app))
            return client, create_tenant(app.state.session_factory, "acme")

        yield make


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_a_burst_then_one_request_per_interval():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)
    for _ in range(60):
        limiter.take("key-a")
    with pytest.raises(RateLimited) as refused:
        limiter.take("key-a")
    assert refused.value.headers == {
        "Retry-After": "1",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.000s",
    }
    limiter.take("key-b")  # every key has its own bucket
    clock.now += 1.0
    limiter.take("key-a")
    with pytest.raises(RateLimited):
        limiter.take("key-a")
    clock.now += 3600
    for _ in range(60):  # refilled to the burst, not beyond
        limiter.take("key-a")
    with pytest.raises(RateLimited):
        limiter.take("key-a")


def test_a_zero_limit_means_no_limit():
    limiter = RateLimiter(0, clock=FakeClock())
    for _ in range(10_000):
        limiter.take("key-a")


def test_over_the_rate_limit_is_429_with_retry_after(make_client: MakeClient, session_factory: Any):
    client, tenant = make_client(rate_limit_per_minute=5)
    other = create_tenant(client.app.state.session_factory, "globex")  # type: ignore[attr-defined]
    for _ in range(5):
        assert client.get("/v1/models", headers=tenant.headers).status_code == 200
    response = client.get("/v1/models", headers=tenant.headers)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "5 requests per minute" in error["message"]
    assert client.get("/v1/models", headers=other.headers).status_code == 200
    assert client.get("/healthz").status_code == 200  # no key, no limit


def test_concurrent_jobs_quota_counts_queued_and_running(make_client: MakeClient):
    client, tenant = make_client(max_concurrent_jobs=2)
    factory = client.app.state.session_factory  # type: ignore[attr-defined]
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    first = create_job(client, tenant, file_id).json()["id"]
    set_job_status(factory, first, "running")
    second = create_job(client, tenant, file_id, seed=2)
    assert second.status_code == 200

    refused = create_job(client, tenant, file_id, seed=3)

    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"  # the openai SDK then does not retry
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == (
        "insufficient_quota",
        "concurrent_jobs_quota_exceeded",
    )
    assert "2 jobs queued or running" in error["message"]
    # A paused job frees its slot, but cannot be resumed into a full queue.
    paused = client.post(
        f"/v1/fine_tuning/jobs/{second.json()['id']}/pause", headers=tenant.headers
    )
    assert paused.json()["status"] == "paused"
    third = create_job(client, tenant, file_id, seed=3)
    assert third.status_code == 200, third.text
    resumed = client.post(
        f"/v1/fine_tuning/jobs/{second.json()['id']}/resume", headers=tenant.headers
    )
    assert resumed.status_code == 429
    set_job_status(factory, first, "succeeded")
    resumed = client.post(
        f"/v1/fine_tuning/jobs/{second.json()['id']}/resume", headers=tenant.headers
    )
    assert resumed.status_code == 200, resumed.text


def test_a_retry_with_the_same_idempotency_key_is_not_refused_by_the_quota(
    make_client: MakeClient,
):
    client, tenant = make_client(max_concurrent_jobs=1)
    file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
    body = {"model": "loraforge/tiny-random-llama", "training_file": file_id}
    headers = {**tenant.headers, "Idempotency-Key": "retry-me"}
    first = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    again = client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["id"] == again.json()["id"]


def stored(data_dir: Path) -> list[Path]:
    root = data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_file_count_quota_refuses_the_next_upload_and_keeps_nothing(
    make_client: MakeClient, settings: Settings
):
    client, tenant = make_client(max_files=2)
    kept = [upload(client, tenant, chat_dataset(10 + i)).json()["id"] for i in range(2)]
    before = stored(settings.data_dir)

    refused = upload(client, tenant, chat_dataset(12))

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("file_count_quota_exceeded", "file")
    assert stored(settings.data_dir) == before
    client.delete(f"/v1/files/{kept[0]}", headers=tenant.headers)
    assert upload(client, tenant, chat_dataset(12)).status_code == 200


def test_stored_bytes_quota_counts_the_new_upload(make_client: MakeClient, settings: Settings):
    limit = len(chat_dataset(12)) + len(chat_dataset(10))
    client, tenant = make_client(max_stored_bytes=limit)
    assert upload(client, tenant, chat_dataset(12)).status_code == 200
    before = stored(settings.data_dir)

    refused = upload(client, tenant, chat_dataset(11))

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "storage_quota_exceeded"
    assert f"{limit} byte quota" in refused.json()["error"]["message"]
    assert stored(settings.data_dir) == before
    assert upload(client, tenant, chat_dataset(10)).status_code == 200  # exactly at the quota


def test_quotas_are_per_organization(make_client: MakeClient):
    client, tenant = make_client(max_files=1)
    other = create_tenant(client.app.state.session_factory, "globex")  # type: ignore[attr-defined]
    assert upload(client, tenant, chat_dataset(12)).status_code == 200
    assert upload(client, other, chat_dataset(12)).status_code == 200
    assert upload(client, tenant, chat_dataset(12)).status_code == 429


def list_operations(client: TestClient) -> list[tuple[str, dict[str, Any]]]:
    """(path, the `limit` parameter) of every operation that pages."""
    found = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "limit":
                    found.append((path, parameter))
    return found


# OpenAI's bound for file lists; every other list keeps ours.
PAGE_CAPS = {"/v1/files": MAX_FILES_PAGE}


def test_every_list_caps_its_page_size(client: TestClient, tenant_a: Tenant, training_file: str):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    webhook = client.post(
        "/v1/webhooks", headers=tenant_a.headers, json={"url": "https://8.8.8.8/hooks"}
    )
    assert webhook.status_code == 200, webhook.text
    lists = list_operations(client)
    assert len(lists) >= 5
    for path, parameter in lists:
        cap = PAGE_CAPS.get(path, MAX_PAGE_SIZE)
        assert parameter["schema"]["maximum"] == cap, path
        url = path.replace("{fine_tuning_job_id}", job_id)
        url = url.replace("{webhook_id}", webhook.json()["id"])
        for limit, status in ((cap, 200), (cap + 1, 400), (0, 400)):
            response = client.get(url, params={"limit": limit}, headers=tenant_a.headers)
            assert response.status_code == status, (path, limit, response.text)
            if status == 400:
                assert response.json()["error"]["param"] == "limit"
