"""Uploads, file content, adapter and export downloads through the API, on both backends:
bytes go to storage and stream back, Range requests behave, archives are cached and rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Export, Job
from app.storage import LocalStorage, Storage
from tests.artifacts import extract, files_under, write_files
from tests.conftest import create_job, upload
from tests.factories import Tenant, add_checkpoint, chat_dataset, set_job_status

ADAPTER_FILES = {
    "adapter_config.json": b'{"r": 16, "lora_alpha": 32, "peft_type": "LORA"}',
    "adapter_model.safetensors": os.urandom(4096),
    "tokenizer.json": b'{"version": "1.0"}' * 200,
    "README.md": b"# LoRA adapter\n",
}
TRAINING_STATE = {"optimizer.pt": b"optimizer", "rng.pt": b"rng", "COMPLETE": b"10\n"}


@pytest.fixture
def storage(client: TestClient) -> Storage:
    """The app's own storage object."""
    found: Storage = client.app.state.storage  # type: ignore[attr-defined]
    return found


@pytest.fixture
def job_id(client: TestClient, tenant_a: Tenant, training_file: str) -> str:
    response = create_job(client, tenant_a, training_file)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def store_tree(storage: Storage, tmp_path: Path, prefix: str, files: dict[str, bytes]) -> None:
    """What a worker does: write a directory locally, then push it to storage."""
    local = tmp_path / "made" / prefix
    write_files(local, files)
    storage.push(local, prefix)


def adapter_url(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/adapter"


def test_upload_lands_in_storage_and_streams_back_with_ranges(
    client: TestClient, tenant_a: Tenant, storage: Storage, settings: Settings
):
    content = chat_dataset(12)
    file_id = upload(client, tenant_a, content).json()["id"]
    key = f"files/{tenant_a.organization_id}/{file_id}"
    url = f"/v1/files/{file_id}/content"

    with storage.open(key) as stream:
        assert stream.read() == content
    full = client.get(url, headers=tenant_a.headers)
    assert full.status_code == 200 and full.content == content
    assert full.headers["accept-ranges"] == "bytes"
    assert "train.jsonl" in full.headers["content-disposition"]
    ranged = client.get(url, headers={**tenant_a.headers, "Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == content[:10]
    assert ranged.headers["content-range"] == f"bytes 0-9/{len(content)}"
    if not isinstance(storage, LocalStorage):
        # Nothing of the upload stays on the API's disk.
        assert not (settings.data_dir / "files").exists()
        assert not list(settings.resolved_cache_dir().rglob("*.part"))

    assert client.delete(f"/v1/files/{file_id}", headers=tenant_a.headers).status_code == 200
    assert not storage.exists(key)


def test_refused_upload_leaves_nothing_in_storage(
    client: TestClient, tenant_a: Tenant, storage: Storage
):
    response = upload(client, tenant_a, b'{"nope": 1}\n' * 12)
    assert response.status_code == 400
    assert storage.list_objects(f"files/{tenant_a.organization_id}") == []


def test_adapter_tarball_round_trips_and_answers_ranges(
    client: TestClient,
    tenant_a: Tenant,
    storage: Storage,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    store_tree(storage, tmp_path, f"jobs/{job_id}/adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")

    full = client.get(adapter_url(job_id), headers=tenant_a.headers)

    assert full.status_code == 200, full.text
    assert full.headers["content-type"] == "application/gzip"
    assert f"{job_id}-adapter.tar.gz" in full.headers["content-disposition"]
    extracted = extract(full.content, tmp_path / "extracted")
    assert extracted == {f"{job_id}-adapter/{name}": data for name, data in ADAPTER_FILES.items()}
    with storage.open(f"jobs/{job_id}/adapter.tar.gz") as cached:
        assert cached.read() == full.content

    def ranged(value: str, **headers: str):  # type: ignore[no-untyped-def]
        return client.get(
            adapter_url(job_id), headers={**tenant_a.headers, "Range": value, **headers}
        )

    middle = ranged("bytes=100-199")
    assert middle.status_code == 206 and middle.content == full.content[100:200]
    assert middle.headers["content-range"] == f"bytes 100-199/{len(full.content)}"
    assert middle.headers["content-length"] == "100"
    tail = ranged("bytes=-50")
    assert tail.status_code == 206 and tail.content == full.content[-50:]
    open_ended = ranged(f"bytes={len(full.content) - 7}-")
    assert open_ended.status_code == 206 and open_ended.content == full.content[-7:]
    beyond = ranged(f"bytes={len(full.content) + 10}-{len(full.content) + 20}")
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(full.content)}"
    stale = ranged("bytes=0-9", **{"If-Range": '"not-the-current-etag"'})
    assert stale.status_code == 200 and stale.content == full.content
    current = ranged("bytes=0-9", **{"If-Range": full.headers["etag"]})
    assert current.status_code == 206 and current.content == full.content[:10]


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        ("bytes=999999-", 416, "range_not_satisfiable"),
        ("bytes=9-3", 400, "invalid_range"),
        ("items=0-1", 400, "invalid_range"),
    ],
)
def test_range_errors_answer_the_json_error_envelope(
    client: TestClient,
    tenant_a: Tenant,
    storage: Storage,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
    header: str,
    status: int,
    code: str,
):
    store_tree(storage, tmp_path, f"jobs/{job_id}/adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")
    size = len(client.get(adapter_url(job_id), headers=tenant_a.headers).content)

    response = client.get(adapter_url(job_id), headers={**tenant_a.headers, "Range": header})

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        "Range",
        "invalid_request_error",
    )
    assert error["message"]
    if status == 416:
        assert response.headers["content-range"] == f"bytes */{size}"


def test_adapter_archive_is_rebuilt_when_the_adapter_changes(
    client: TestClient,
    tenant_a: Tenant,
    storage: Storage,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    store_tree(storage, tmp_path, f"jobs/{job_id}/adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")
    first = client.get(adapter_url(job_id), headers=tenant_a.headers).content
    built = storage.stat(f"jobs/{job_id}/adapter.tar.gz")
    assert client.get(adapter_url(job_id), headers=tenant_a.headers).content == first
    assert storage.stat(f"jobs/{job_id}/adapter.tar.gz") == built, "served from the cache"

    store_tree(
        storage, tmp_path, f"jobs/{job_id}/adapter", {**ADAPTER_FILES, "README.md": b"# new\n"}
    )
    third = client.get(adapter_url(job_id), headers=tenant_a.headers).content

    assert files_under(third, f"{job_id}-adapter")["README.md"] == b"# new\n"


def test_succeeded_job_without_adapter_files_is_404(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    set_job_status(session_factory, job_id, "succeeded")
    response = client.get(adapter_url(job_id), headers=tenant_a.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"


def add_checkpoint_row(factory: sessionmaker[Session], job_id: str, step: int) -> str:
    with factory() as session:
        checkpoint = add_checkpoint(session, session.get_one(Job, job_id), step, 1.0)
        session.commit()
        return checkpoint.id


def test_checkpoint_adapter_download(
    client: TestClient,
    tenant_a: Tenant,
    storage: Storage,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    step_files = {**TRAINING_STATE, **{f"adapter/{k}": v for k, v in ADAPTER_FILES.items()}}
    store_tree(storage, tmp_path, f"jobs/{job_id}/checkpoints/step-10", step_files)
    store_tree(storage, tmp_path, f"jobs/{job_id}/checkpoints/step-20", {"adapter/x": b"x"})
    complete = add_checkpoint_row(session_factory, job_id, 10)
    incomplete = add_checkpoint_row(session_factory, job_id, 20)
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{{}}/adapter"

    response = client.get(url.format(complete), headers=tenant_a.headers)
    missing_marker = client.get(url.format(incomplete), headers=tenant_a.headers)

    assert response.status_code == 200, response.text
    assert files_under(response.content, f"{job_id}-step-10-adapter") == ADAPTER_FILES
    assert missing_marker.status_code == 404
    assert missing_marker.json()["error"]["code"] == "artifact_not_found"


def test_export_content_round_trips_the_merged_model(
    client: TestClient,
    tenant_a: Tenant,
    storage: Storage,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    set_job_status(session_factory, job_id, "succeeded")
    body = {"type": "merged", "dtype": "float16"}
    url = f"/v1/fine_tuning/jobs/{job_id}/exports"
    export_id = client.post(url, headers=tenant_a.headers, json=body).json()["id"]
    merged = {"config.json": b"{}", "model.safetensors": os.urandom(8192)}
    store_tree(storage, tmp_path, f"exports/{export_id}", merged)
    with session_factory() as session:
        session.get_one(Export, export_id).status = "succeeded"
        session.commit()

    response = client.get(f"{url}/{export_id}/content", headers=tenant_a.headers)
    partial = client.get(
        f"{url}/{export_id}/content", headers={**tenant_a.headers, "Range": "bytes=0-99"}
    )

    assert response.status_code == 200, response.text
    assert files_under(response.content, f"{export_id}-merged-float16") == merged
    assert partial.status_code == 206 and partial.content == response.content[:100]
