"""A real job tells a receiver on 127.0.0.1 that it succeeded: `loraforge serve` (SQLite and
its broker) and `loraforge api` + `loraforge worker` (Postgres and Redis), with the receiver
allowed by LORAFORGE_WEBHOOK_ALLOW_HOSTS and the signature checked by the official
`standardwebhooks` library."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.e2e.stacks import (
    Stack,
    create_job,
    embedded_stack,
    hello_dataset,
    postgres_redis_stack,
    upload,
    wait_status,
)
from tests.live import wait_for
from tests.receivers import receiver

pytestmark = pytest.mark.slow

HOOK_SETTINGS = {"LORAFORGE_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]'}


@pytest.fixture(params=["embedded", pytest.param("postgres-redis", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    make = embedded_stack if request.param == "embedded" else postgres_redis_stack
    with make(tmp_path / request.param, settings=HOOK_SETTINGS) as running:
        yield running


def test_a_receiver_gets_the_signed_succeeded_webhook_of_a_real_job(stack: Stack):
    client = stack.client()
    with receiver() as hook:
        created = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["fine_tuning.job.succeeded"]},
        )
        assert created.status_code == 200, created.text
        webhook = created.json()
        job = create_job(client, upload(client, hello_dataset(16)), max_steps=4)
        finished = wait_status(client, job["id"], "succeeded", "failed")
        assert finished["status"] == "succeeded", finished["error"]
        (request,) = hook.wait_for(1, timeout=60)

    event = Webhook(webhook["secret"]).verify(request.body, request.headers)
    assert event["type"] == "fine_tuning.job.succeeded"
    assert event["data"] == {"id": job["id"]}
    assert event["object"] == "event" and event["id"].startswith("evt")
    assert json.loads(request.body) == event

    def delivered() -> dict[str, object] | None:
        page = client.get(f"/webhooks/{webhook['id']}/deliveries").json()
        done = [d for d in page["data"] if d["status"] == "succeeded"]
        return done[0] if done else None

    delivery = wait_for(delivered, 30, "the delivery to be recorded as succeeded")
    assert delivery["id"] == request.headers["webhook-id"]
    (attempt,) = delivery["attempts"]  # type: ignore[misc]
    assert attempt["status_code"] == 200 and attempt["latency_ms"] > 0
