"""OpenAI's Uploads API: a file in parts, each bounded and stored as it arrives, validated as a
whole on completion like `POST /v1/files`, cancelled, or expired after an hour."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Upload, UploadPart
from app.services.uploads import expire_uploads
from tests.conftest import upload
from tests.factories import Tenant, chat_dataset, jsonl


def create_upload(client: TestClient, tenant: Tenant, size: int, **fields: Any) -> Any:
    body = {
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "bytes": size,
        "mime_type": "text/jsonl",
    }
    return client.post("/v1/uploads", headers=tenant.headers, json={**body, **fields})


def add_part(client: TestClient, tenant: Tenant, upload_id: str, data: bytes) -> Any:
    return client.post(
        f"/v1/uploads/{upload_id}/parts",
        headers=tenant.headers,
        files={"data": ("blob", data, "application/octet-stream")},
    )


def complete(client: TestClient, tenant: Tenant, upload_id: str, part_ids: list[str], **more: Any):
    return client.post(
        f"/v1/uploads/{upload_id}/complete",
        headers=tenant.headers,
        json={"part_ids": part_ids, **more},
    )


def send_in_parts(
    client: TestClient, tenant: Tenant, content: bytes, size: int
) -> tuple[str, list[str]]:
    """A new upload of `content` and its parts of `size` bytes, in order."""
    created = create_upload(client, tenant, len(content))
    assert created.status_code == 200, created.text
    upload_id = created.json()["id"]
    part_ids = []
    for start in range(0, len(content), size):
        part = add_part(client, tenant, upload_id, content[start : start + size])
        assert part.status_code == 200, part.text
        part_ids.append(part.json()["id"])
    return upload_id, part_ids


def stored_parts(settings: Settings) -> list[Path]:
    root = settings.data_dir / "uploads"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_parts_sent_out_of_order_complete_into_a_validated_file(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    content = chat_dataset(30)
    created = create_upload(client, tenant_a, len(content))
    assert created.status_code == 200, created.text
    pending = created.json()
    assert (pending["object"], pending["status"], pending["file"]) == ("upload", "pending", None)
    assert pending["expires_at"] == pending["created_at"] + 3600
    third = len(content) // 3
    pieces = [content[:third], content[third : 2 * third], content[2 * third :]]
    # Sent last piece first: completion orders them by part_ids, not by arrival.
    ids = {i: add_part(client, tenant_a, pending["id"], pieces[i]).json() for i in (2, 0, 1)}
    assert ids[0]["object"] == "upload.part" and ids[0]["upload_id"] == pending["id"]
    assert len(stored_parts(settings)) == 3

    md5 = hashlib.md5(content).hexdigest()
    done = complete(client, tenant_a, pending["id"], [ids[i]["id"] for i in range(3)], md5=md5)

    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed"
    file = body["file"]
    assert (file["bytes"], file["filename"], file["purpose"]) == (
        len(content),
        "train.jsonl",
        "fine-tune",
    )
    assert file["stats"]["examples"] == 30
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    got = client.get(f"/v1/files/{file['id']}/content", headers=tenant_a.headers)
    assert got.content == content
    assert stored_parts(settings) == []
    again = add_part(client, tenant_a, pending["id"], b"x")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "invalid_upload_state")


def test_an_invalid_dataset_is_refused_at_completion_as_a_single_upload_is(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    content = chat_dataset(11) + jsonl({"messages": "no"})
    upload_id, part_ids = send_in_parts(client, tenant_a, content, 500)
    refused = complete(client, tenant_a, upload_id, part_ids)
    single = upload(client, tenant_a, content)
    assert refused.status_code == single.status_code == 400
    assert refused.json()["error"] == single.json()["error"]
    assert client.get("/v1/files", headers=tenant_a.headers).json()["data"] == []
    # Still pending: the client may fix its parts and complete again.
    assert len(stored_parts(settings)) == len(part_ids)


def test_completion_checks_part_ids_sizes_and_md5(client: TestClient, tenant_a: Tenant):
    content = chat_dataset(12)
    upload_id, part_ids = send_in_parts(client, tenant_a, content, 400)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"part_ids": part_ids[:-1]}, "part_ids", "upload_size_mismatch"),
        ({"part_ids": [*part_ids, part_ids[0]]}, "part_ids", "duplicate_part"),
        ({"part_ids": [*part_ids[:-1], "part-unknown"]}, "part_ids", "part_not_found"),
        ({"part_ids": part_ids, "md5": "0" * 32}, "md5", "md5_mismatch"),
    ]
    for body, param, code in cases:
        response = client.post(
            f"/v1/uploads/{upload_id}/complete", headers=tenant_a.headers, json=body
        )
        assert response.status_code == 400, (body, response.text)
        assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (
            param,
            code,
        )
    assert complete(client, tenant_a, upload_id, part_ids).status_code == 200


def test_a_part_may_not_take_the_upload_past_its_bytes(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    upload_id = create_upload(client, tenant_a, 10).json()["id"]
    assert add_part(client, tenant_a, upload_id, b"123456").status_code == 200
    refused = add_part(client, tenant_a, upload_id, b"12345")
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "upload_too_large")
    assert len(stored_parts(settings)) == 1


@pytest.fixture
def small_parts(settings: Settings) -> Settings:
    settings.max_upload_part_bytes = 1024
    return settings


def test_a_part_over_the_part_cap_is_413_and_leaves_nothing(
    small_parts: Settings, client: TestClient, tenant_a: Tenant
):
    upload_id = create_upload(client, tenant_a, 4096).json()["id"]
    declared = add_part(client, tenant_a, upload_id, b"x" * 1025)
    assert (declared.status_code, declared.json()["error"]["param"]) == (413, "data")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap is counted as bytes arrive
        yield b'--b\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n\r\n'
        for _ in range(64):
            yield b"y" * 64
        yield b"\r\n--b--\r\n"

    streamed = client.post(
        f"/v1/uploads/{upload_id}/parts",
        headers={**tenant_a.headers, "Content-Type": "multipart/form-data; boundary=b"},
        content=chunked(),
    )
    assert streamed.status_code == 413
    assert stored_parts(small_parts) == []
    assert add_part(client, tenant_a, upload_id, b"z" * 1024).status_code == 200


def test_an_upload_larger_than_the_upload_cap_is_refused_at_creation(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    response = create_upload(client, tenant_a, settings.max_upload_bytes + 1)
    assert response.status_code == 400  # the schema's maximum: the server's cap
    assert response.json()["error"]["param"] == "bytes"


def test_cancel_deletes_the_parts_and_ends_the_upload(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    upload_id, part_ids = send_in_parts(client, tenant_a, chat_dataset(12), 700)
    cancelled = client.post(f"/v1/uploads/{upload_id}/cancel", headers=tenant_a.headers)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert stored_parts(settings) == []
    refused = complete(client, tenant_a, upload_id, part_ids)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "invalid_upload_state")
    again = client.post(f"/v1/uploads/{upload_id}/cancel", headers=tenant_a.headers)
    assert again.json()["status"] == "cancelled"


def test_an_upload_expires_after_an_hour_and_the_sweep_deletes_its_parts(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    session_factory: sessionmaker[Session],
):
    upload_id, part_ids = send_in_parts(client, tenant_a, chat_dataset(12), 700)
    with session_factory() as session:  # the hour passes
        session.execute(
            update(Upload).where(Upload.id == upload_id).values(expires_at=utcnow() - timedelta(1))
        )
        session.commit()
    refused = add_part(client, tenant_a, upload_id, b"x")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "invalid_upload_state")
    assert "expired" in refused.json()["error"]["message"]
    assert complete(client, tenant_a, upload_id, part_ids).status_code == 409

    storage = client.app.state.storage  # type: ignore[attr-defined]
    assert expire_uploads(session_factory, storage) == 1
    assert stored_parts(settings) == []
    with session_factory() as session:
        assert session.get_one(Upload, upload_id).status == "expired"
        assert session.scalar(select(func.count(UploadPart.id))) == 0
    assert expire_uploads(session_factory, storage) == 0


def test_a_non_fine_tune_upload_is_kept_as_sent(client: TestClient, tenant_a: Tenant):
    content = b"\x89PNG not a dataset" * 10
    created = create_upload(
        client,
        tenant_a,
        len(content),
        purpose="vision",
        expires_after={"anchor": "created_at", "seconds": 7200},
    ).json()
    part = add_part(client, tenant_a, created["id"], content).json()
    done = complete(client, tenant_a, created["id"], [part["id"]]).json()
    assert done["file"]["purpose"] == "vision" and done["file"]["stats"] is None
    assert done["file"]["expires_at"] == done["file"]["created_at"] + 7200


def test_parts_and_completions_take_the_organizations_upload_slots(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, settings: Settings
):
    upload_id, part_ids = send_in_parts(client, tenant_a, chat_dataset(12), 700)
    other = create_upload(client, tenant_b, 3).json()["id"]
    slots = client.app.state.upload_slots  # type: ignore[attr-defined]
    slots.per_organization = 1
    with slots.slot(tenant_a.organization_id):  # one of A's uploads is being received
        busy_part = add_part(client, tenant_a, upload_id, b"x")
        busy_complete = complete(client, tenant_a, upload_id, part_ids)
        # Another organization's parts are not held up.
        assert add_part(client, tenant_b, other, b"abc").status_code == 200
    for busy in (busy_part, busy_complete):
        assert (busy.status_code, busy.json()["error"]["code"]) == (
            429,
            "too_many_concurrent_uploads",
        )
        assert busy.headers["Retry-After"] == "1"
    assert slots.taken(tenant_a.organization_id) == 0
    assert complete(client, tenant_a, upload_id, part_ids).status_code == 200
