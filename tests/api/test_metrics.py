"""GET /metrics: Prometheus' text format, as prometheus-client's own parser reads it, with
request counts and latencies by route template and status, and job counts that move with
a job."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_job
from tests.factories import Tenant


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests(method: str, route: str, status: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"method": method, "route": route, "status": status}
    return "loraforge_http_requests_total", tuple(sorted(labels.items()))


def jobs(status: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "loraforge_jobs", (("status", status),)


def test_job_counts_and_request_counters_move_with_a_job(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    before = scrape(client)
    assert before[jobs("queued")] == 0
    assert before[("loraforge_oldest_queued_job_age_seconds", ())] == 0
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant_a.headers)
    client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=tenant_a.headers)
    time.sleep(0.05)
    after = scrape(client)

    assert after[jobs("queued")] == 1
    assert after[("loraforge_oldest_queued_job_age_seconds", ())] > 0
    created = requests("POST", "/v1/fine_tuning/jobs", "200")
    assert after[created] == before.get(created, 0) + 1
    read = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    assert after[requests("GET", read, "200")] == 1
    assert after[requests("GET", read, "404")] == 1
    latency = (
        "loraforge_http_request_duration_seconds_count",
        (("method", "POST"), ("route", "/v1/fine_tuning/jobs"), ("status", "200")),
    )
    assert after[latency] == 1


def test_unknown_paths_share_one_series(client: TestClient, tenant_a: Tenant):
    for n in range(3):
        client.get(f"/no/such/path/{n}", headers=tenant_a.headers)
    samples = scrape(client)
    assert samples[requests("GET", "unmatched", "404")] == 3
    assert not [key for key in samples if "/no/such" in str(key)]


def test_cancelled_jobs_leave_the_queued_count(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant_a.headers)
    samples = scrape(client)
    assert samples[jobs("queued")] == 0 and samples[jobs("cancelled")] == 1
