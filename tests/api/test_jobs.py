"""Jobs API: create (validation, auto resolution, idempotency, enqueue after commit), read,
list, cancel, pause, resume, events and checkpoints."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.presenters import event_page_json, event_public
from app.config import Settings
from app.db.base import utcnow
from app.db.models import Job
from app.main import create_app
from app.schemas.common import ListPage
from app.schemas.jobs import EventPublic
from app.services.events import add_event, list_events
from tests.conftest import RecordingEnqueuer, create_job, post_job, published, upload
from tests.factories import Tenant, add_checkpoint, add_metrics, chat_dataset, create_tenant


def test_create_resolves_auto_and_returns_openai_job(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    response = create_job(
        client, tenant_a, training_file, suffix="demo", seed=7, metadata={"team": "nlp"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["seed"] == 7
    assert job["metadata"] == {"team": "nlp"}
    # 12 examples: OpenAI's rule gives ceil(100 / 12) = 9 epochs.
    assert job["hyperparameters"] == {
        "n_epochs": 9,
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
    }
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["training"]["learning_rate"] == 2e-4
    assert job["lora"] == {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": "all-linear"}
    assert job["quantization"]["quant_type"] == "nf4"
    assert job["quantization"]["double_quant"] is True
    assert job["attempt"] == 0
    for hidden in ("lease_owner", "spec", "organization", "storage_key"):
        assert hidden not in job


def test_explicit_hyperparameters_in_method_are_kept(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    method = {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}
        },
    }
    job = create_job(
        client,
        tenant_a,
        training_file,
        method=method,
        lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        training={"max_steps": 30, "packing": True},
    ).json()
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 0.5,
    }
    assert job["training"]["learning_rate"] == 1e-4
    assert job["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert job["training"]["packing"] is True


def test_a_created_job_reads_back_as_it_was_answered(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    created = create_job(
        client,
        tenant_a,
        training_file,
        suffix="readback",
        metadata={"team": "nlp"},
        seed=7,
        lora={"r": 8, "alpha": 16},
    ).json()
    read = client.get(f"/v1/fine_tuning/jobs/{created['id']}", headers=tenant_a.headers).json()
    assert read == created
    assert created["metadata"] == {"team": "nlp"}
    assert created["suffix"] == "readback"
    with session_factory() as session:
        job = session.get_one(Job, created["id"])
        assert (job.queue, job.cancel_requested, job.pause_requested) == ("training", False, False)
        assert job.enqueued_at == job.created_at  # committed as it is published
        assert (job.lease_owner, job.started_at, job.error) == (None, None, None)


def test_deprecated_top_level_hyperparameters_are_accepted(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    job = create_job(client, tenant_a, training_file, hyperparameters={"n_epochs": 4}).json()
    assert job["hyperparameters"]["n_epochs"] == 4


def test_unknown_model_is_400_model_not_found(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    response = create_job(client, tenant_a, training_file, model="gpt-9")
    assert response.status_code == 400
    assert response.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_unknown_training_file_is_400(client: TestClient, tenant_a: Tenant):
    response = create_job(client, tenant_a, "file-doesnotexist")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"
    assert response.json()["error"]["code"] == "file_not_found"


def test_out_of_bounds_and_unknown_fields_are_refused(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"lora": {"r": 0}}, "lora.r"),
        ({"training": {"learning_rate": 1.0}}, "training.learning_rate"),
        ({"quantization": {"bits": 3}}, "quantization.bits"),
        ({"status": "succeeded"}, "status"),
        ({"organization_id": "org-x"}, "organization_id"),
        ({"training": {"lr": 1e-4}}, "training.lr"),
    ]
    for fields, param in cases:
        response = create_job(client, tenant_a, training_file, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["code"] == "invalid_request_body"


def test_job_is_committed_before_it_is_enqueued_by_name(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    job = create_job(client, tenant_a, training_file).json()
    (sent,) = enqueuer.sent
    assert sent.task_name == "training.run_job"
    assert sent.args == [job["id"]]
    assert sent.queue == "training"
    # Another session saw the committed row at the moment of publishing.
    assert sent.committed_status == "queued"


def test_enqueue_failure_still_creates_the_job(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    enqueuer: RecordingEnqueuer,
    session_factory: sessionmaker[Session],
):
    enqueuer.fail = True
    response = create_job(client, tenant_a, training_file)
    assert response.status_code == 200
    with session_factory() as session:
        job = session.get(Job, response.json()["id"])
        assert job is not None
        assert job.status == "queued"
        assert job.enqueued_at is None  # the reaper's signal to publish it again


def test_a_new_job_is_committed_with_the_time_it_is_published(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    before = utcnow()
    response = create_job(client, tenant_a, training_file)
    assert response.json()["status"] == "queued"
    with session_factory() as session:
        job = session.get(Job, response.json()["id"])
        assert job is not None
        assert job.enqueued_at is not None
        assert before <= job.enqueued_at <= utcnow()


def test_the_response_does_not_wait_for_the_broker(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    released = threading.Event()
    # The publish blocks until the test has its response; True once it was let go in time.
    outcomes: list[bool] = []
    enqueuer.after_send = lambda _args: outcomes.append(released.wait(timeout=10))
    response = post_job(client, tenant_a, training_file)
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    released.set()
    published(client)
    assert outcomes == [True]
    assert [s.args for s in enqueuer.sent] == [[response.json()["id"]]]


def test_a_new_job_is_published_from_the_publishing_thread(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    threads: list[str] = []
    enqueuer.after_send = lambda _args: threads.append(threading.current_thread().name)
    assert create_job(client, tenant_a, training_file).status_code == 200
    assert len(threads) == 1
    assert threads[0].startswith("publish")  # neither the event loop nor the thread pool


def test_a_stopping_api_publishes_the_jobs_it_created_first(settings: Settings):
    enqueuer = RecordingEnqueuer()
    finished: list[str] = []
    enqueuer.after_send = lambda args: (time.sleep(1.0), finished.append(args[0]))
    app = create_app(settings, enqueuer=enqueuer)
    with TestClient(app) as client:
        tenant = create_tenant(app.state.session_factory, "acme")
        file_id = upload(client, tenant, chat_dataset(12)).json()["id"]
        job_id = post_job(client, tenant, file_id).json()["id"]
    assert finished == [job_id]  # the lifespan's end waited for the publish under way


def test_idempotency_key_returns_the_same_job(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    headers = {**tenant_a.headers, "Idempotency-Key": "retry-1"}
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file}
    first = client.post("/v1/fine_tuning/jobs", headers=headers, json=body).json()
    second = client.post("/v1/fine_tuning/jobs", headers=headers, json=body).json()
    assert first["id"] == second["id"]
    published(client)
    assert len(enqueuer.sent) == 1
    other = client.post("/v1/fine_tuning/jobs", headers=headers, json={**body, "suffix": "x"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_list_pages_newest_first(client: TestClient, tenant_a: Tenant, training_file: str):
    ids = [create_job(client, tenant_a, training_file).json()["id"] for _ in range(5)]
    page = client.get("/v1/fine_tuning/jobs?limit=3", headers=tenant_a.headers).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:3]
    assert page["has_more"] is True
    rest = client.get(
        f"/v1/fine_tuning/jobs?after={page['data'][-1]['id']}", headers=tenant_a.headers
    ).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][3:]
    assert rest["has_more"] is False


def test_cancel_queued_job_ends_it_and_is_idempotent(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant_a.headers)
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant_a.headers)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    pause = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=tenant_a.headers)
    assert pause.status_code == 409
    assert pause.json()["error"]["code"] == "invalid_job_state"


def test_cancel_running_job_sets_the_flag_for_the_worker(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    with session_factory() as session:
        session.get_one(Job, job_id).status = "running"
        session.commit()
    job = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant_a.headers).json()
    assert job["status"] == "running"
    assert job["cancel_requested"] is True


def test_pause_and_resume_a_queued_job_requeues_it(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=tenant_a.headers).json()
    assert paused["status"] == "paused"
    resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=tenant_a.headers)
    assert resumed.json()["status"] == "queued"
    assert [s.args for s in enqueuer.sent] == [[job_id], [job_id]]
    assert (
        client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=tenant_a.headers).status_code
        == 409
    )


def test_events_list_newest_first_with_cursor(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    with session_factory() as session:
        add_metrics(session, session.get_one(Job, job_id), steps=5)
        session.commit()
    page = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events?limit=4", headers=tenant_a.headers
    ).json()
    assert [e["data"]["step"] for e in page["data"]] == [5, 4, 3, 2]
    assert all(
        e["object"] == "fine_tuning.job.event" and e["type"] == "metrics" for e in page["data"]
    )
    rest = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events?after={page['data'][-1]['id']}",
        headers=tenant_a.headers,
    ).json()
    assert [e["type"] for e in rest["data"]] == ["metrics", "message", "message"]
    assert rest["data"][-1]["message"].startswith("Created fine-tuning job")
    assert rest["has_more"] is False


def test_an_event_page_is_byte_for_byte_the_json_of_its_public_models(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    data = {
        "step": 1,
        "train_loss": 0.1 + 0.2,
        "lr": 2.5e-8,
        "nested": {"flags": [True, None, -3], "text": 'é\n"quoted" ✓'},
    }
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        add_event(session, job, "Étape 1 — perte 0.3 ✓", type="metrics", data=data)
        add_event(session, job, "Low disk", level="warn")
        session.commit()
        rows, has_more = list_events(session, tenant_a.organization_id, job_id, after=None, limit=3)
    models = ListPage[EventPublic].of([event_public(row) for row in rows], has_more)
    assert event_page_json(rows, has_more) == models.model_dump_json().encode()
    served = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=3", headers=tenant_a.headers)
    assert served.content == models.model_dump_json().encode()
    assert served.headers["content-type"] == "application/json"
    assert [event["level"] for event in served.json()["data"]] == ["warn", "info", "info"]


def test_events_past_the_oldest_are_an_empty_page_and_an_unknown_job_is_404(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    events = f"/v1/fine_tuning/jobs/{job_id}/events"
    oldest = client.get(events, headers=tenant_a.headers).json()["data"][-1]["id"]
    past = client.get(f"{events}?after={oldest}", headers=tenant_a.headers)
    assert past.status_code == 200
    assert (past.json()["data"], past.json()["has_more"]) == ([], False)
    missing = client.get("/v1/fine_tuning/jobs/ftjob-missing/events", headers=tenant_a.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "fine_tuning_job_id"


def test_checkpoints_list_newest_step_first(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        for step, loss in ((10, 1.5), (20, 1.1), (30, 0.8)):
            add_checkpoint(session, job, step, loss)
        session.commit()
    page = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=2", headers=tenant_a.headers
    ).json()
    assert [c["step_number"] for c in page["data"]] == [30, 20]
    assert page["data"][0]["metrics"]["train_loss"] == 0.8
    assert page["data"][0]["object"] == "fine_tuning.job.checkpoint"
    assert page["has_more"] is True


def test_a_diverged_runs_nan_and_infinite_metrics_are_kept_as_null(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        data = {"step": 7, "train_loss": math.nan, "lr": 1e-3}
        add_event(session, job, "Step 7: training loss=nan", type="metrics", data=data)
        add_checkpoint(session, job, 7, math.inf)
        session.commit()
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=tenant_a.headers)
    assert events.json()["data"][0]["data"] == {"step": 7, "train_loss": None, "lr": 1e-3}
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant_a.headers)
    assert checkpoints.json()["data"][0]["metrics"]["train_loss"] is None
    assert checkpoints.json()["data"][0]["step_number"] == 7


def test_validation_file_must_belong_to_the_tenant(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, training_file: str
):
    foreign = upload(client, tenant_b, chat_dataset(12)).json()["id"]
    response = create_job(client, tenant_a, training_file, validation_file=foreign)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "validation_file"


def test_job_too_big_for_every_worker_class_is_refused_at_creation(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings
):
    settings.queue_memory = {"small-gpu": 1 << 20, "smaller-gpu": 1 << 10}
    response = create_job(client, tenant_a, training_file)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "GiB" in error["message"]


def test_job_goes_to_the_smallest_worker_class_it_fits(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    enqueuer: RecordingEnqueuer,
):
    settings.queue_memory = {"gpu-80g": 80 << 30, "gpu-24g": 24 << 30, "tiny": 1 << 10}
    assert create_job(client, tenant_a, training_file).status_code == 200
    assert enqueuer.sent[-1].queue == "gpu-24g"
