"""Job events as server-sent events: oldest first, resumable with Last-Event-ID, following a
running job until it ends; without stream=true the endpoint is still a JSON page."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.services.events import add_event
from tests.conftest import create_job
from tests.factories import Tenant, add_metrics, set_job_status

pytestmark = pytest.mark.timeout(60)


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: Any
    comment: bool = False


def parse_sse(body: str) -> list[Frame]:
    """Split a text/event-stream body into frames (comments kept as comment frames)."""
    frames = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields.setdefault("comment", line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        data = json.loads(fields["data"]) if "data" in fields else None
        frames.append(Frame(fields.get("id"), fields.get("event"), data, "comment" in fields))
    return frames


@pytest.fixture
def fast_streams(settings: Settings) -> Settings:
    settings.event_poll_interval_s = 0.05
    return settings


@pytest.fixture
def job_id(client: TestClient, tenant_a: Tenant, training_file: str) -> str:
    return str(create_job(client, tenant_a, training_file).json()["id"])


def add_job_events(factory: sessionmaker[Session], job_id: str, steps: int) -> None:
    with factory() as session:
        add_metrics(session, session.get_one(Job, job_id), steps)
        session.commit()


def stream(client: TestClient, tenant: Tenant, job_id: str, query: str = "", **headers: str) -> Any:
    url = f"/v1/fine_tuning/jobs/{job_id}/events?stream=true{query}"
    return client.get(url, headers={**tenant.headers, **headers})


def listed_oldest_first(client: TestClient, tenant: Tenant, job_id: str) -> list[dict[str, Any]]:
    url = f"/v1/fine_tuning/jobs/{job_id}/events?limit=100"
    return list(reversed(client.get(url, headers=tenant.headers).json()["data"]))


def test_stream_sends_the_events_in_order_and_ends_after_the_job_ended(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
    fast_streams: Settings,
    job_id: str,
):
    other_job = create_job(client, tenant_a, training_file).json()["id"]
    add_job_events(session_factory, job_id, 3)
    add_job_events(session_factory, other_job, 2)
    set_job_status(session_factory, job_id, "succeeded")

    response = stream(client, tenant_a, job_id)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    frames = parse_sse(response.text)
    events, done = frames[:-1], frames[-1]
    expected = listed_oldest_first(client, tenant_a, job_id)
    assert len(expected) == 5  # two from creation, three metrics
    assert [f.data for f in events] == expected
    assert [f.id for f in events] == [e["id"] for e in expected]
    assert [f.event for f in events] == ["message", "message", "metrics", "metrics", "metrics"]
    assert (done.event, done.id, done.data) == ("done", None, {"status": "succeeded"})


def test_last_event_id_resumes_after_that_event(
    client: TestClient,
    tenant_a: Tenant,
    session_factory: sessionmaker[Session],
    fast_streams: Settings,
    job_id: str,
):
    add_job_events(session_factory, job_id, 4)
    set_job_status(session_factory, job_id, "failed")
    expected = listed_oldest_first(client, tenant_a, job_id)

    resumed = stream(client, tenant_a, job_id, **{"Last-Event-ID": expected[2]["id"]})

    frames = parse_sse(resumed.text)
    assert [f.id for f in frames[:-1]] == [e["id"] for e in expected[3:]]
    assert frames[-1].data == {"status": "failed"}


def test_after_query_resumes_and_the_header_wins_over_it(
    client: TestClient,
    tenant_a: Tenant,
    session_factory: sessionmaker[Session],
    fast_streams: Settings,
    job_id: str,
):
    add_job_events(session_factory, job_id, 4)
    set_job_status(session_factory, job_id, "cancelled")
    ids = [e["id"] for e in listed_oldest_first(client, tenant_a, job_id)]

    by_query = parse_sse(stream(client, tenant_a, job_id, f"&after={ids[1]}").text)
    assert [f.id for f in by_query[:-1]] == ids[2:]
    # A reconnecting EventSource keeps the first URL and sends the newer Last-Event-ID.
    both = stream(client, tenant_a, job_id, f"&after={ids[1]}", **{"Last-Event-ID": ids[4]})
    assert [f.id for f in parse_sse(both.text)[:-1]] == ids[5:]


def finish_later(factory: sessionmaker[Session], job_id: str, delay_s: float) -> threading.Thread:
    """What a worker does meanwhile: write a metrics event, then end the job with a message."""

    def work() -> None:
        time.sleep(delay_s)
        add_job_events(factory, job_id, 1)
        time.sleep(delay_s)
        with factory() as session:
            job = session.get_one(Job, job_id)
            job.status = "succeeded"
            add_event(session, job, "The job has successfully completed")
            session.commit()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_stream_follows_a_running_job_until_it_ends(
    client: TestClient,
    tenant_a: Tenant,
    session_factory: sessionmaker[Session],
    fast_streams: Settings,
    job_id: str,
):
    set_job_status(session_factory, job_id, "running")
    worker = finish_later(session_factory, job_id, 0.3)

    response = stream(client, tenant_a, job_id)
    worker.join()

    frames = parse_sse(response.text)
    messages = [f.data["message"] for f in frames if f.event in ("message", "metrics")]
    assert messages[-2:] == ["Step 1: training loss=2.000", "The job has successfully completed"]
    assert [f.id for f in frames if f.id] == [
        e["id"] for e in listed_oldest_first(client, tenant_a, job_id)
    ]
    assert frames[-1].event == "done"


def test_idle_stream_sends_keep_alive_comments(
    client: TestClient,
    tenant_a: Tenant,
    session_factory: sessionmaker[Session],
    fast_streams: Settings,
    job_id: str,
):
    fast_streams.event_keepalive_s = 0.1
    set_job_status(session_factory, job_id, "running")
    worker = finish_later(session_factory, job_id, 0.5)

    response = stream(client, tenant_a, job_id)
    worker.join()

    assert ": keep-alive" in response.text
    assert parse_sse(response.text)[-1].event == "done"


def test_a_last_event_id_naming_no_event_is_404(client: TestClient, tenant_a: Tenant, job_id: str):
    response = stream(client, tenant_a, job_id, **{"Last-Event-ID": "nonsense"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "cursor_not_found"
    assert response.json()["error"]["param"] == "Last-Event-ID"


def test_without_stream_the_endpoint_is_still_a_json_page(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    add_job_events(session_factory, job_id, 3)
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=2", headers=tenant_a.headers)
    assert response.headers["content-type"] == "application/json"
    page = response.json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [e["data"]["step"] for e in page["data"]] == [3, 2]


def test_openapi_documents_both_responses(client: TestClient):
    operation = client.app.openapi()["paths"]["/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"]  # type: ignore[attr-defined]
    content = operation["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    parameters = {p["name"]: p["in"] for p in operation["get"]["parameters"]}
    assert parameters["stream"] == "query"
    assert parameters["Last-Event-ID"] == "header"
