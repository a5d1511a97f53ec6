"""Merged exports: created for succeeded jobs only, enqueued after commit, listed, read, and
downloaded as a .tar.gz once the worker has built them."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Export
from tests.artifacts import files_under, write_files
from tests.conftest import RecordingEnqueuer, Sent, create_job
from tests.factories import Tenant, set_job_status

MERGED_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(8192),
    "tokenizer.json": b'{"version": "1.0"}',
    "export.json": b'{"max_abs_logit_diff": 0.0001}',
}


@pytest.fixture
def job_id(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
) -> str:
    job = create_job(client, tenant_a, training_file).json()["id"]
    set_job_status(session_factory, job, "succeeded")
    return str(job)


def exports_url(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/exports"


def finish_export(factory: sessionmaker[Session], export_id: str, **values: object) -> None:
    """What the worker records when it is done."""
    with factory() as session:
        export = session.get_one(Export, export_id)
        for name, value in {"status": "succeeded", "finished_at": utcnow(), **values}.items():
            setattr(export, name, value)
        session.commit()


def test_create_export_commits_then_enqueues_run_export(
    client: TestClient, tenant_a: Tenant, enqueuer: RecordingEnqueuer, job_id: str
):
    response = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})

    assert response.status_code == 200, response.text
    export = response.json()
    assert export["id"].startswith("ftexp-")
    assert export["object"] == "fine_tuning.job.export"
    assert export["fine_tuning_job_id"] == job_id
    assert (export["type"], export["dtype"], export["status"]) == ("merged", "bfloat16", "queued")
    assert export["finished_at"] is None and export["error"] is None and export["details"] is None
    assert "storage_key" not in export
    # Another session already saw the committed row when the message went out.
    assert enqueuer.sent[-1] == Sent("exports.run_export", [export["id"]], "exports", "queued")


def test_create_export_keeps_the_requested_dtype(client: TestClient, tenant_a: Tenant, job_id: str):
    body = {"type": "merged", "dtype": "float16"}
    export = client.post(exports_url(job_id), headers=tenant_a.headers, json=body).json()
    assert export["dtype"] == "float16"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "gguf"},
        {"type": "merged", "dtype": "int4"},
        {"type": "merged", "quantize": True},
    ],
)
def test_invalid_export_body_is_400(
    client: TestClient,
    tenant_a: Tenant,
    enqueuer: RecordingEnqueuer,
    session_factory: sessionmaker[Session],
    job_id: str,
    body: dict[str, object],
):
    response = client.post(exports_url(job_id), headers=tenant_a.headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert not [s for s in enqueuer.sent if s.task_name == "exports.run_export"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Export)) == 0


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_export_of_a_job_that_has_not_succeeded_is_409(
    client: TestClient,
    tenant_a: Tenant,
    enqueuer: RecordingEnqueuer,
    session_factory: sessionmaker[Session],
    job_id: str,
    status: str,
):
    set_job_status(session_factory, job_id, status)
    response = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_job_state"
    assert not [s for s in enqueuer.sent if s.task_name == "exports.run_export"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Export)) == 0


def test_broker_down_still_records_the_queued_export(
    client: TestClient, tenant_a: Tenant, enqueuer: RecordingEnqueuer, job_id: str
):
    enqueuer.fail = True
    response = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})
    assert response.status_code == 200
    export_id = response.json()["id"]
    read = client.get(f"{exports_url(job_id)}/{export_id}", headers=tenant_a.headers)
    assert read.json()["status"] == "queued"


def test_list_exports_newest_first_with_cursor(client: TestClient, tenant_a: Tenant, job_id: str):
    created = [
        client.post(
            exports_url(job_id), headers=tenant_a.headers, json={"type": "merged", "dtype": d}
        ).json()["id"]
        for d in ("bfloat16", "float16", "float32")
    ]

    first = client.get(f"{exports_url(job_id)}?limit=2", headers=tenant_a.headers).json()
    assert first["object"] == "list"
    assert [e["id"] for e in first["data"]] == created[::-1][:2]
    assert first["has_more"] is True
    rest = client.get(
        f"{exports_url(job_id)}?limit=2&after={first['last_id']}", headers=tenant_a.headers
    ).json()
    assert [e["id"] for e in rest["data"]] == [created[0]]
    assert rest["has_more"] is False


def test_list_shows_only_this_jobs_exports(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    other = create_job(client, tenant_a, training_file).json()["id"]
    set_job_status(session_factory, other, "succeeded")
    mine = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})
    client.post(exports_url(other), headers=tenant_a.headers, json={"type": "merged"})

    listed = client.get(exports_url(job_id), headers=tenant_a.headers).json()["data"]

    assert [e["id"] for e in listed] == [mine.json()["id"]]


def test_read_export_shows_what_the_worker_recorded(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    export_id = client.post(
        exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"}
    ).json()["id"]
    details = {"max_abs_logit_diff": 0.00012, "bytes": 8192, "files": ["model.safetensors"]}
    finish_export(session_factory, export_id, details=details)

    export = client.get(f"{exports_url(job_id)}/{export_id}", headers=tenant_a.headers).json()

    assert export["status"] == "succeeded"
    assert export["details"] == details
    assert export["finished_at"] >= export["created_at"]


def test_failed_export_carries_its_error(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    export_id = client.post(
        exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"}
    ).json()["id"]
    error = {"code": "internal_error", "message": "the export failed", "param": None}
    finish_export(session_factory, export_id, status="failed", error=error)

    export = client.get(f"{exports_url(job_id)}/{export_id}", headers=tenant_a.headers).json()
    assert (export["status"], export["error"]) == ("failed", error)
    content = client.get(f"{exports_url(job_id)}/{export_id}/content", headers=tenant_a.headers)
    assert content.status_code == 409
    assert content.json()["error"]["code"] == "invalid_export_state"


def test_export_of_another_job_is_404(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    export_id = client.post(
        exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"}
    ).json()["id"]
    other = create_job(client, tenant_a, training_file).json()["id"]

    for suffix in ("", "/content"):
        response = client.get(f"{exports_url(other)}/{export_id}{suffix}", headers=tenant_a.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "export_not_found"


def test_export_content_before_success_is_409(
    client: TestClient, tenant_a: Tenant, settings: Settings, job_id: str
):
    export_id = client.post(
        exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"}
    ).json()["id"]
    write_files(settings.data_dir / "exports" / export_id, MERGED_FILES)  # half-written

    response = client.get(f"{exports_url(job_id)}/{export_id}/content", headers=tenant_a.headers)

    assert response.status_code == 409
    assert "queued" in response.json()["error"]["message"]
    assert not (settings.data_dir / "exports" / f"{export_id}.tar.gz").exists()


def test_export_content_round_trips_the_merged_model(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    body = {"type": "merged", "dtype": "float16"}
    export_id = client.post(exports_url(job_id), headers=tenant_a.headers, json=body).json()["id"]
    write_files(settings.data_dir / "exports" / export_id, MERGED_FILES)
    finish_export(session_factory, export_id)
    url = f"{exports_url(job_id)}/{export_id}/content"

    response = client.get(url, headers=tenant_a.headers)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    top = f"{export_id}-merged-float16"
    assert f"{top}.tar.gz" in response.headers["content-disposition"]
    assert files_under(response.content, top) == MERGED_FILES
    partial = client.get(url, headers={**tenant_a.headers, "Range": "bytes=0-99"})
    assert partial.status_code == 206
    assert partial.content == response.content[:100]


def test_succeeded_export_without_files_is_404(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    export_id = client.post(
        exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"}
    ).json()["id"]
    finish_export(session_factory, export_id)
    response = client.get(f"{exports_url(job_id)}/{export_id}/content", headers=tenant_a.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"


def test_a_created_export_records_its_publish_and_a_failed_one_is_left_to_the_reaper(
    client: TestClient,
    tenant_a: Tenant,
    enqueuer: RecordingEnqueuer,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    sent = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})
    enqueuer.fail = True
    unsent = client.post(exports_url(job_id), headers=tenant_a.headers, json={"type": "merged"})
    with session_factory() as session:
        published = session.get_one(Export, sent.json()["id"])
        lost = session.get_one(Export, unsent.json()["id"])
        assert published.enqueued_at is not None and published.attempt == 0
        # NULL: the reaper's next pass publishes it, without waiting for requeue_after_s.
        assert (lost.status, lost.enqueued_at) == ("queued", None)
