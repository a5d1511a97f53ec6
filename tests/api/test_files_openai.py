"""Files as OpenAI's API has them: every upload purpose (only fine-tune files are training
data), list order and page size, expires_after and the expiry that follows it."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.api.presenters import file_page_json, file_public
from app.config import Settings
from app.db.base import utcnow
from app.db.models import File
from app.schemas.common import ListPage
from app.schemas.files import UPLOAD_PURPOSES, FilePublic
from app.services.files import delete_expired_files
from tests.conftest import create_job, upload
from tests.factories import Tenant, chat_dataset

NOT_JSONL = b"%PDF-1.7 \x00\x01 not a dataset"


def upload_form(
    client: TestClient, tenant: Tenant, content: bytes, **fields: str
) -> dict[str, object]:
    response = client.post(
        "/v1/files",
        headers=tenant.headers,
        files={"file": ("data.bin", content, "application/octet-stream")},
        data={"purpose": "fine-tune", **fields},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def expire(factory: sessionmaker[Session], file_id: str) -> None:
    """The clock passes the file's expires_at."""
    with factory() as session:
        session.execute(
            update(File).where(File.id == file_id).values(expires_at=utcnow() - timedelta(1))
        )
        session.commit()


@pytest.mark.parametrize("purpose", sorted(UPLOAD_PURPOSES - {"fine-tune"}))
def test_every_openai_purpose_is_stored_without_dataset_validation(
    client: TestClient, tenant_a: Tenant, purpose: str
):
    body = upload_form(client, tenant_a, NOT_JSONL, purpose=purpose)
    assert (body["purpose"], body["bytes"], body["stats"]) == (purpose, len(NOT_JSONL), None)
    content = client.get(f"/v1/files/{body['id']}/content", headers=tenant_a.headers)
    assert content.content == NOT_JSONL


def test_only_fine_tune_files_are_validated_as_training_data(client: TestClient, tenant_a: Tenant):
    refused = upload(client, tenant_a, NOT_JSONL, purpose="fine-tune")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "file"
    unknown = upload(client, tenant_a, chat_dataset(12), purpose="training")
    assert unknown.status_code == 400
    assert (unknown.json()["error"]["param"], unknown.json()["error"]["code"]) == (
        "purpose",
        "invalid_purpose",
    )


def test_a_job_naming_a_file_of_another_purpose_is_a_clear_400(
    client: TestClient, tenant_a: Tenant
):
    batch = upload_form(client, tenant_a, chat_dataset(12), purpose="batch")
    response = create_job(client, tenant_a, str(batch["id"]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("training_file", "invalid_file_purpose")
    assert "'batch'" in error["message"] and "'fine-tune'" in error["message"]


def test_list_filters_by_purpose(client: TestClient, tenant_a: Tenant, training_file: str):
    vision = upload_form(client, tenant_a, NOT_JSONL, purpose="vision")["id"]
    listed = client.get("/v1/files?purpose=vision", headers=tenant_a.headers).json()
    assert [f["id"] for f in listed["data"]] == [vision]
    assert client.get("/v1/files?purpose=evals", headers=tenant_a.headers).json()["data"] == []


def test_order_asc_pages_oldest_first_with_the_same_cursor(client: TestClient, tenant_a: Tenant):
    ids = [upload(client, tenant_a, chat_dataset(10 + i)).json()["id"] for i in range(5)]
    first = client.get("/v1/files?order=asc&limit=2", headers=tenant_a.headers).json()
    assert [f["id"] for f in first["data"]] == ids[:2] and first["has_more"] is True
    rest = client.get(
        f"/v1/files?order=asc&after={first['last_id']}", headers=tenant_a.headers
    ).json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and rest["has_more"] is False
    newest = client.get("/v1/files?order=desc&limit=1", headers=tenant_a.headers).json()
    assert [f["id"] for f in newest["data"]] == ids[-1:]


def test_list_defaults_to_openais_page_of_ten_thousand(
    client: TestClient, tenant_a: Tenant, session_factory: sessionmaker[Session]
):
    """150 files (more than any other list's largest page) come back in one default page."""
    now = utcnow()
    with session_factory() as session:
        session.add_all(
            File(
                id=f"file-{n:024d}",
                organization_id=tenant_a.organization_id,
                filename=f"{n}.jsonl",
                purpose="fine-tune",
                bytes=n,
                sha256="",
                storage_key=f"files/{tenant_a.organization_id}/file-{n:024d}",
                stats={"examples": n, "format": "chat", "characters": 1, "messages": 1},
                created_at=now - timedelta(seconds=n),
            )
            for n in range(150)
        )
        session.commit()
    page = client.get("/v1/files", headers=tenant_a.headers).json()
    assert len(page["data"]) == 150 and page["has_more"] is False
    assert page["data"][0]["id"] == "file-" + "0" * 24
    # a file validated before converted_from and tool_examples existed shows their defaults
    assert page["data"][149]["stats"] == {
        "examples": 149,
        "format": "chat",
        "characters": 1,
        "messages": 1,
        "converted_from": None,
        "tool_examples": 0,
    }
    assert client.get("/v1/files?limit=10000", headers=tenant_a.headers).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
        {"expires_after": json.dumps({"anchor": "created_at", "seconds": 3600})},
    ],
    ids=["sdk-brackets", "json-part"],
)
def test_expires_after_sets_the_files_expires_at(
    client: TestClient, tenant_a: Tenant, fields: dict[str, str]
):
    body = upload_form(client, tenant_a, chat_dataset(12), **fields)
    assert body["expires_at"] == body["created_at"] + 3600  # type: ignore[operator]
    shown = client.get(f"/v1/files/{body['id']}", headers=tenant_a.headers).json()
    assert shown["expires_at"] == body["expires_at"]


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
        {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
        {"expires_after": "{not json"},
        {"expires_after": json.dumps({"anchor": "created_at", "seconds": 2592001})},
    ],
)
def test_expires_after_out_of_openais_bounds_is_refused(
    client: TestClient, tenant_a: Tenant, fields: dict[str, str]
):
    response = client.post(
        "/v1/files",
        headers=tenant_a.headers,
        files={"file": ("t.jsonl", chat_dataset(12), "application/jsonl")},
        data={"purpose": "fine-tune", **fields},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_after"


def test_batch_files_expire_after_thirty_days_unless_told(client: TestClient, tenant_a: Tenant):
    batch = upload_form(client, tenant_a, NOT_JSONL, purpose="batch")
    assert batch["expires_at"] == batch["created_at"] + 30 * 24 * 3600  # type: ignore[operator]
    kept = upload_form(client, tenant_a, chat_dataset(12))
    assert kept["expires_at"] is None


def test_an_expired_file_is_neither_listed_nor_usable_and_the_sweep_deletes_it(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    fields = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    file_id = str(upload_form(client, tenant_a, chat_dataset(12), **fields)["id"])
    stored = settings.data_dir / "files" / tenant_a.organization_id / file_id
    assert stored.is_file()
    expire(session_factory, file_id)

    listed = client.get("/v1/files", headers=tenant_a.headers).json()["data"]
    assert file_id not in [f["id"] for f in listed]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert client.get(path, headers=tenant_a.headers).status_code == 404
    job = create_job(client, tenant_a, file_id)
    assert (job.status_code, job.json()["error"]["code"]) == (400, "file_not_found")

    storage = client.app.state.storage  # type: ignore[attr-defined]
    assert delete_expired_files(session_factory, storage) == 1
    assert not stored.exists()
    with session_factory() as session:
        assert session.get(File, file_id) is None
    assert delete_expired_files(session_factory, storage) == 0


def test_the_file_page_built_from_rows_is_the_models_json():
    """file_page_json skips the models for speed; it must say exactly what they would."""
    now = utcnow()
    rows = [
        SimpleNamespace(
            id=f"file-{n}",
            bytes=n,
            created_at=now,
            filename=f"{n}.jsonl",
            purpose=purpose,
            sha256="ab" * 32,
            stats=stats,
            expires_at=expires_at,
        )
        for n, (purpose, stats, expires_at) in enumerate(
            [
                (
                    "fine-tune",
                    {"examples": 3, "format": "chat", "characters": 9, "messages": 6},
                    None,
                ),
                ("batch", {}, now + timedelta(days=30)),
                ("fine-tune-results", {}, None),
            ]
        )
    ]
    models = ListPage[FilePublic].of([file_public(row) for row in rows], True)  # type: ignore[arg-type]
    assert json.loads(file_page_json(rows, True)) == json.loads(models.model_dump_json())  # type: ignore[arg-type]
