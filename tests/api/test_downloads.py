"""Adapter downloads: the final adapter and each checkpoint's, as cached .tar.gz archives that
stream with Range support and never leak files from outside the artifact directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job
from app.services.archives import write_tar_gz
from tests.artifacts import extract, files_under, members, write_files
from tests.conftest import create_job
from tests.factories import Tenant, add_checkpoint, set_job_status

ADAPTER_FILES = {
    "adapter_config.json": b'{"r": 16, "lora_alpha": 32, "peft_type": "LORA"}',
    "adapter_model.safetensors": os.urandom(4096),
    "tokenizer.json": b'{"version": "1.0"}' * 200,
    "README.md": b"# LoRA adapter\n",
    "provenance.json": b'{"seed": 7}',
}
TRAINING_STATE = {
    "optimizer.pt": b"optimizer state",
    "scheduler.pt": b"scheduler state",
    "rng.pt": b"rng state",
    "trainer_state.json": b'{"global_step": 10}',
    "COMPLETE": b"10\n",
}


@pytest.fixture
def job_id(client: TestClient, tenant_a: Tenant, training_file: str) -> str:
    response = create_job(client, tenant_a, training_file)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def adapter_url(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/adapter"


def test_adapter_tarball_round_trips_the_adapter_directory(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    write_files(settings.data_dir / "jobs" / job_id / "adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")

    response = client.get(adapter_url(job_id), headers=tenant_a.headers)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment")
    assert f"{job_id}-adapter.tar.gz" in disposition
    assert response.headers["accept-ranges"] == "bytes"
    extracted = extract(response.content, tmp_path / "extracted")
    assert extracted == {f"{job_id}-adapter/{name}": data for name, data in ADAPTER_FILES.items()}
    # Cached beside the adapter directory, for the next request.
    assert (settings.data_dir / "jobs" / job_id / "adapter.tar.gz").read_bytes() == (
        response.content
    )


def test_adapter_tarball_never_follows_symlinks(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
    tmp_path: Path,
):
    adapter = settings.data_dir / "jobs" / job_id / "adapter"
    write_files(adapter, ADAPTER_FILES)
    secret = tmp_path / "outside" / "secret.txt"
    write_files(secret.parent, {"secret.txt": b"another tenant's data"})
    (adapter / "leak.txt").symlink_to(secret)
    (adapter / "leak_dir").symlink_to(secret.parent, target_is_directory=True)
    write_files(adapter / "nested", {"kept.txt": b"nested file"})
    set_job_status(session_factory, job_id, "succeeded")

    content = client.get(adapter_url(job_id), headers=tenant_a.headers).content

    found = members(content)
    assert f"{job_id}-adapter/nested" in found
    assert found[f"{job_id}-adapter/nested/kept.txt"] == b"nested file"
    assert not any("leak" in name or "secret" in name for name in found)
    assert b"another tenant's data" not in b"".join(v for v in found.values() if v)
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in found)


@pytest.mark.parametrize("status", ["queued", "running", "paused", "failed", "cancelled"])
def test_adapter_before_success_is_409(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
    status: str,
):
    write_files(settings.data_dir / "jobs" / job_id / "adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, status)

    response = client.get(adapter_url(job_id), headers=tenant_a.headers)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "invalid_job_state"
    assert status in error["message"] and "succeeded" in error["message"]
    assert not (settings.data_dir / "jobs" / job_id / "adapter.tar.gz").exists()


def test_succeeded_job_without_adapter_files_is_404(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session], job_id: str
):
    set_job_status(session_factory, job_id, "succeeded")
    response = client.get(adapter_url(job_id), headers=tenant_a.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"


def test_archive_is_built_once_and_rebuilt_when_the_adapter_changes(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    adapter = settings.data_dir / "jobs" / job_id / "adapter"
    write_files(adapter, ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")
    archive = settings.data_dir / "jobs" / job_id / "adapter.tar.gz"

    first = client.get(adapter_url(job_id), headers=tenant_a.headers).content
    built = archive.stat()
    second = client.get(adapter_url(job_id), headers=tenant_a.headers).content
    assert second == first
    assert (archive.stat().st_ino, archive.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)

    (adapter / "README.md").write_bytes(b"# rewritten\n")
    later = built.st_mtime + 5
    os.utime(adapter / "README.md", (later, later))
    third = client.get(adapter_url(job_id), headers=tenant_a.headers).content
    assert files_under(third, f"{job_id}-adapter")["README.md"] == b"# rewritten\n"
    assert not list(archive.parent.glob(".*.part")), "temp files are cleaned up"


def test_the_same_directory_always_gives_the_same_bytes(tmp_path: Path):
    write_files(tmp_path / "adapter", ADAPTER_FILES)
    write_tar_gz(tmp_path / "adapter", tmp_path / "one.tar.gz", top="a")
    write_tar_gz(tmp_path / "adapter", tmp_path / "two.tar.gz", top="a")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()


def test_range_request_returns_206_with_the_requested_bytes(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    write_files(settings.data_dir / "jobs" / job_id / "adapter", ADAPTER_FILES)
    set_job_status(session_factory, job_id, "succeeded")
    full = client.get(adapter_url(job_id), headers=tenant_a.headers).content
    assert len(full) > 200

    partial = client.get(
        adapter_url(job_id), headers={**tenant_a.headers, "Range": "bytes=100-199"}
    )
    assert partial.status_code == 206
    assert partial.content == full[100:200]
    assert partial.headers["content-range"] == f"bytes 100-199/{len(full)}"

    tail = client.get(adapter_url(job_id), headers={**tenant_a.headers, "Range": "bytes=-50"})
    assert tail.status_code == 206
    assert tail.content == full[-50:]

    beyond = f"bytes={len(full) + 10}-{len(full) + 20}"
    unsatisfiable = client.get(adapter_url(job_id), headers={**tenant_a.headers, "Range": beyond})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(full)}"


def add_checkpoint_row(factory: sessionmaker[Session], job_id: str, step: int) -> str:
    with factory() as session:
        checkpoint = add_checkpoint(session, session.get_one(Job, job_id), step, 1.0)
        session.commit()
        return checkpoint.id


def checkpoint_url(job_id: str, checkpoint_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/adapter"


def test_checkpoint_adapter_is_its_adapter_subfolder(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    step_dir = settings.data_dir / "jobs" / job_id / "checkpoints" / "step-10"
    write_files(step_dir, TRAINING_STATE)
    write_files(step_dir / "adapter", ADAPTER_FILES)
    # Checkpoints can be downloaded while the job still runs.
    set_job_status(session_factory, job_id, "running")
    checkpoint_id = add_checkpoint_row(session_factory, job_id, 10)

    response = client.get(checkpoint_url(job_id, checkpoint_id), headers=tenant_a.headers)

    assert response.status_code == 200, response.text
    top = f"{job_id}-step-10-adapter"
    assert f"{top}.tar.gz" in response.headers["content-disposition"]
    assert files_under(response.content, top) == ADAPTER_FILES


def test_flat_checkpoint_adapter_leaves_out_the_training_state(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    step_dir = settings.data_dir / "jobs" / job_id / "checkpoints" / "step-20"
    write_files(step_dir, {**ADAPTER_FILES, **TRAINING_STATE, "rng_state.pth": b"hf rng"})
    checkpoint_id = add_checkpoint_row(session_factory, job_id, 20)

    response = client.get(checkpoint_url(job_id, checkpoint_id), headers=tenant_a.headers)

    assert response.status_code == 200, response.text
    assert files_under(response.content, f"{job_id}-step-20-adapter") == ADAPTER_FILES


def test_incomplete_checkpoint_is_404(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    job_id: str,
):
    step_dir = settings.data_dir / "jobs" / job_id / "checkpoints" / "step-30"
    write_files(step_dir / "adapter", ADAPTER_FILES)  # no COMPLETE marker: a crash mid-write
    checkpoint_id = add_checkpoint_row(session_factory, job_id, 30)

    response = client.get(checkpoint_url(job_id, checkpoint_id), headers=tenant_a.headers)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"


def test_checkpoint_of_another_job_is_404(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
    training_file: str,
    job_id: str,
):
    step_dir = settings.data_dir / "jobs" / job_id / "checkpoints" / "step-10"
    write_files(step_dir, TRAINING_STATE)
    write_files(step_dir / "adapter", ADAPTER_FILES)
    checkpoint_id = add_checkpoint_row(session_factory, job_id, 10)
    other_job = create_job(client, tenant_a, training_file).json()["id"]

    response = client.get(checkpoint_url(other_job, checkpoint_id), headers=tenant_a.headers)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "checkpoint_not_found"
    assert response.json()["error"]["param"] == "checkpoint_id"
    # The same id under its own job is served.
    own = client.get(checkpoint_url(job_id, checkpoint_id), headers=tenant_a.headers)
    assert own.status_code == 200
