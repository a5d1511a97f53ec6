"""What real jobs tell others, on `loraforge serve` (SQLite and its broker) and on
`loraforge api` + `loraforge worker` (Postgres and Redis): a signed webhook to a receiver on
127.0.0.1 (allowed by LORAFORGE_WEBHOOK_ALLOW_HOSTS; the signature checked by the official
`standardwebhooks` library), and Prometheus metrics on the API and on the worker's port."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
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
from tests.live import free_port, wait_for
from tests.receivers import receiver

pytestmark = pytest.mark.slow

WORKER_METRICS_PORT = free_port()
SETTINGS = {
    "LORAFORGE_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "LORAFORGE_WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("postgres-redis", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    make = embedded_stack if request.param == "embedded" else postgres_redis_stack
    with make(tmp_path_factory.mktemp(request.param), settings=SETTINGS) as running:
        yield running


def samples(url: str) -> Samples:
    """Every sample a /metrics page shows, read by prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text)
        for sample in family.samples
    }


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


def test_api_and_worker_metrics_move_with_a_job(stack: Stack):
    client = stack.client()
    api_before = samples(f"{stack.base_url}/metrics")
    job = create_job(client, upload(client, hello_dataset(16)), max_steps=5)
    finished = wait_status(client, job["id"], "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]

    api = samples(f"{stack.base_url}/metrics")
    succeeded = ("loraforge_jobs", (("status", "succeeded"),))
    assert api[succeeded] == api_before[succeeded] + 1
    created = (
        "loraforge_http_requests_total",
        (("method", "POST"), ("route", "/v1/fine_tuning/jobs"), ("status", "200")),
    )
    assert api[created] == api_before.get(created, 0) + 1

    def worker_counted() -> Samples | None:
        found = samples(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")
        done = found.get(("loraforge_worker_job_attempt_seconds_count", (("status", "succeeded"),)))
        return found if done else None

    worker = wait_for(worker_counted, 30, "the worker to count the attempt")
    assert worker[("loraforge_worker_steps_total", ())] >= 5
    assert worker[("loraforge_worker_step_seconds_count", ())] >= 4
    assert worker[("loraforge_worker_tokens_per_second", ())] > 0
    assert worker[("loraforge_worker_device_peak_memory_bytes", ())] > 0
