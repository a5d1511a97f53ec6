"""Webhooks API: endpoints per organization with a secret shown once, SSRF-checked URLs,
a test event recorded and handed to the webhook queue, and job changes the API makes
recorded in the outbox with them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import WebhookDelivery
from app.main import create_app
from app.queue import TASK_DELIVER_WEBHOOK
from app.schemas.webhooks import EVENT_TYPES
from app.services.webhook_urls import UrlRefused, check_url
from tests.conftest import RecordingEnqueuer, create_job, upload
from tests.factories import Tenant, chat_dataset, create_tenant

HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def allowing_client(settings: Settings, enqueuer: RecordingEnqueuer) -> Iterator[TestClient]:
    """The API of an operator who allows webhooks to 127.0.0.1."""
    allowing = settings.model_copy(update={"webhook_allow_hosts": ["127.0.0.1"]})
    with TestClient(create_app(allowing, enqueuer=enqueuer)) as test_client:
        yield test_client


@pytest.fixture
def acme(allowing_client: TestClient) -> Tenant:
    return create_tenant(allowing_client.app.state.session_factory, "acme")  # type: ignore[attr-defined]


def deliveries(client: TestClient) -> list[WebhookDelivery]:
    factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    with factory() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def test_create_shows_the_signing_secret_once(allowing_client: TestClient, acme: Tenant):
    created = allowing_client.post(
        "/v1/webhooks", headers=acme.headers, json={"url": HOOK, "description": "ops"}
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "webhook_endpoint"
    assert body["secret"].startswith("whsec_")
    assert body["events"] == list(EVENT_TYPES)  # none named: every event
    read = allowing_client.get(f"/v1/webhooks/{body['id']}", headers=acme.headers).json()
    assert read["secret"] is None and read["url"] == HOOK and read["description"] == "ops"
    listed = allowing_client.get("/v1/webhooks", headers=acme.headers).json()
    assert [w["id"] for w in listed["data"]] == [body["id"]]
    assert body["secret"] not in json.dumps(listed)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hooks",
        "http://localhost/hooks",
        "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://100.64.0.1/hooks",
        "http://0.0.0.0/hooks",
        "ftp://hooks.example.com/x",
        "http://user:pass@8.8.8.8/hooks",
    ],
)
def test_a_url_on_a_private_address_is_refused_without_the_allow_setting(
    client: TestClient, tenant_a: Tenant, url: str
):
    response = client.post("/v1/webhooks", headers=tenant_a.headers, json={"url": url})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_webhook_url"
    assert response.json()["error"]["param"] == "url"
    assert client.get("/v1/webhooks", headers=tenant_a.headers).json()["data"] == []


def test_a_public_address_needs_no_allow_setting(client: TestClient, tenant_a: Tenant):
    response = client.post(
        "/v1/webhooks", headers=tenant_a.headers, json={"url": "https://8.8.8.8/hooks"}
    )
    assert response.status_code == 200, response.text


def test_the_allow_setting_takes_names_and_networks():
    assert check_url("http://localhost:8080/x", ["localhost"]).port == 8080
    assert check_url("http://10.9.8.7/x", ["10.0.0.0/8"]).addresses[0].packed == bytes(
        [10, 9, 8, 7]
    )
    with pytest.raises(UrlRefused):
        check_url("http://10.9.8.7/x", ["192.168.0.0/16", "hooks.internal"])


def test_another_organizations_webhook_ids_answer_404(allowing_client: TestClient, acme: Tenant):
    factory = allowing_client.app.state.session_factory  # type: ignore[attr-defined]
    globex = create_tenant(factory, "globex")
    hook_id = allowing_client.post("/v1/webhooks", headers=acme.headers, json={"url": HOOK}).json()[
        "id"
    ]
    for method, path in [
        ("GET", f"/v1/webhooks/{hook_id}"),
        ("POST", f"/v1/webhooks/{hook_id}/test"),
        ("GET", f"/v1/webhooks/{hook_id}/deliveries"),
        ("DELETE", f"/v1/webhooks/{hook_id}"),
    ]:
        response = allowing_client.request(method, path, headers=globex.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "webhook_not_found"
    assert allowing_client.get("/v1/webhooks", headers=globex.headers).json()["data"] == []
    assert deliveries(allowing_client) == []
    assert allowing_client.get(f"/v1/webhooks/{hook_id}", headers=acme.headers).status_code == 200


def test_test_event_is_recorded_and_handed_to_the_webhook_queue(
    allowing_client: TestClient, acme: Tenant, enqueuer: RecordingEnqueuer, settings: Settings
):
    hook_id = allowing_client.post(
        "/v1/webhooks",
        headers=acme.headers,
        json={"url": HOOK, "events": ["fine_tuning.job.failed"]},
    ).json()["id"]
    sent = allowing_client.post(f"/v1/webhooks/{hook_id}/test", headers=acme.headers)
    assert sent.status_code == 200, sent.text
    delivery = sent.json()
    assert delivery["event_type"] == "webhook.test" and delivery["status"] == "pending"
    assert delivery["payload"]["object"] == "event"
    assert delivery["payload"]["data"] == {"id": hook_id}
    (message,) = [s for s in enqueuer.sent if s.task_name == TASK_DELIVER_WEBHOOK]
    assert message.args == [delivery["id"]] and message.queue == settings.webhook_queue
    listed = allowing_client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=acme.headers)
    assert [d["id"] for d in listed.json()["data"]] == [delivery["id"]]


def test_cancelling_a_queued_job_records_its_webhook_with_the_change(
    allowing_client: TestClient, acme: Tenant
):
    subscribed = allowing_client.post(
        "/v1/webhooks",
        headers=acme.headers,
        json={"url": HOOK, "events": ["fine_tuning.job.cancelled"]},
    ).json()["id"]
    allowing_client.post(
        "/v1/webhooks",
        headers=acme.headers,
        json={"url": HOOK, "events": ["fine_tuning.job.succeeded"]},
    )
    file_id = upload(allowing_client, acme, chat_dataset(12)).json()["id"]
    job_id = create_job(allowing_client, acme, file_id).json()["id"]
    cancelled = allowing_client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=acme.headers)
    assert cancelled.json()["status"] == "cancelled"
    (delivery,) = deliveries(allowing_client)
    assert delivery.endpoint_id == subscribed
    assert delivery.event_type == "fine_tuning.job.cancelled"
    event = json.loads(delivery.payload)
    assert event["type"] == "fine_tuning.job.cancelled" and event["data"] == {"id": job_id}
    assert event["id"].startswith("evt") and event["object"] == "event"


def test_delete_removes_the_webhook_and_its_deliveries(allowing_client: TestClient, acme: Tenant):
    hook_id = allowing_client.post("/v1/webhooks", headers=acme.headers, json={"url": HOOK}).json()[
        "id"
    ]
    allowing_client.post(f"/v1/webhooks/{hook_id}/test", headers=acme.headers)
    deleted = allowing_client.delete(f"/v1/webhooks/{hook_id}", headers=acme.headers)
    assert deleted.json() == {"id": hook_id, "object": "webhook_endpoint", "deleted": True}
    assert allowing_client.get(f"/v1/webhooks/{hook_id}", headers=acme.headers).status_code == 404
    assert deliveries(allowing_client) == []


def test_unknown_event_names_are_refused(allowing_client: TestClient, acme: Tenant):
    response = allowing_client.post(
        "/v1/webhooks", headers=acme.headers, json={"url": HOOK, "events": ["job.done"]}
    )
    assert response.status_code == 400


def test_a_description_with_a_control_character_is_refused(
    allowing_client: TestClient, acme: Tenant
):
    # PostgreSQL cannot store NUL in text: refused as a bad request, never a 500.
    for description in ("\u0000", "line\nbreak"):
        body = {"url": HOOK, "description": description}
        response = allowing_client.post("/v1/webhooks", headers=acme.headers, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "description"
