"""Files API: upload with validation and a streamed size cap, list, retrieve, content, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import upload
from tests.factories import Tenant, chat_dataset, chat_line, jsonl


def stored_files(settings: Settings) -> list[Path]:
    root = settings.data_dir / "files"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_returns_the_openai_file_object_with_stats(client: TestClient, tenant_a: Tenant):
    response = upload(client, tenant_a, chat_dataset(12), filename="train.jsonl")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file"
    assert body["id"].startswith("file-")
    assert body["purpose"] == "fine-tune"
    assert body["filename"] == "train.jsonl"
    assert body["bytes"] == len(chat_dataset(12))
    assert body["stats"]["examples"] == 12
    assert body["stats"]["format"] == "chat"
    assert "storage_key" not in body


def test_filename_is_display_only(client: TestClient, tenant_a: Tenant, settings: Settings):
    response = upload(client, tenant_a, chat_dataset(12), filename="../../etc/passwd")
    assert response.status_code == 200
    assert response.json()["filename"] == "../../etc/passwd"
    (path,) = stored_files(settings)
    assert path.name == response.json()["id"]
    assert settings.data_dir.resolve() in path.resolve().parents


def test_content_returns_the_uploaded_bytes(client: TestClient, tenant_a: Tenant):
    file_id = upload(client, tenant_a, chat_dataset(12)).json()["id"]
    response = client.get(f"/v1/files/{file_id}/content", headers=tenant_a.headers)
    assert response.status_code == 200
    assert response.content == chat_dataset(12)
    ranged = client.get(
        f"/v1/files/{file_id}/content", headers={**tenant_a.headers, "Range": "bytes=0-9"}
    )
    assert ranged.status_code == 206
    assert ranged.content == chat_dataset(12)[:10]


def test_list_pages_newest_first_with_cursor(client: TestClient, tenant_a: Tenant):
    ids = [upload(client, tenant_a, chat_dataset(10 + i)).json()["id"] for i in range(5)]
    first = client.get("/v1/files?limit=2", headers=tenant_a.headers).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = client.get(
        f"/v1/files?limit=10&after={first['data'][-1]['id']}", headers=tenant_a.headers
    ).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False


def test_delete_removes_row_and_bytes(client: TestClient, tenant_a: Tenant, settings: Settings):
    file_id = upload(client, tenant_a, chat_dataset(12)).json()["id"]
    response = client.delete(f"/v1/files/{file_id}", headers=tenant_a.headers)
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=tenant_a.headers).status_code == 404
    assert stored_files(settings) == []


def _messages(*pairs: tuple[str, object]) -> dict[str, object]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


GOOD = chat_line("q", "a")

BAD_FILES: list[tuple[str, bytes, int, str]] = [
    ("invalid_json", jsonl(GOOD, "{not json"), 2, "line"),
    ("invalid_utf8", jsonl(GOOD) + b'{"text": "\xff\xfe"}\n', 2, "line"),
    ("example_not_object", jsonl(GOOD, "[1, 2]"), 2, "line"),
    ("unrecognized_format", jsonl(GOOD, {"question": "x"}), 2, "line"),
    ("missing_messages_list", jsonl({"messages": []}), 1, "messages"),
    ("invalid_message", jsonl({"messages": ["hello"]}), 1, "messages[0]"),
    (
        "message_unrecognized_key",
        jsonl({"messages": [{"role": "user", "content": "x", "tool": 1}]}),
        1,
        "messages[0].tool",
    ),
    (
        "unrecognized_role",
        jsonl(_messages(("robot", "x"), ("assistant", "y"))),
        1,
        "messages[0].role",
    ),
    (
        "missing_content",
        jsonl(_messages(("user", ""), ("assistant", "y"))),
        1,
        "messages[0].content",
    ),
    (
        "invalid_content",
        jsonl(_messages(("user", 5), ("assistant", "y"))),
        1,
        "messages[0].content",
    ),
    (
        "invalid_weight",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": 2},
                ]
            }
        ),
        1,
        "messages[1].weight",
    ),
    ("example_missing_assistant_message", jsonl(_messages(("user", "x"))), 1, "messages"),
    (
        "example_no_trained_message",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "weight": 0},
                ]
            }
        ),
        1,
        "messages",
    ),
    ("missing_prompt", jsonl({"completion": "y"}), 1, "prompt"),
    ("missing_completion", jsonl({"prompt": "x", "completion": ""}), 1, "completion"),
    ("invalid_field_type", jsonl({"text": 3}), 1, "text"),
    ("missing_text", jsonl({"text": ""}), 1, "text"),
    ("mixed_formats", jsonl(GOOD, {"text": "plain"}), 2, "line"),
    ("line_too_long", jsonl(GOOD, {"text": "x" * 5000}), 2, "line"),
    ("too_few_examples", jsonl(*[GOOD] * 3), 0, "file"),
]


@pytest.mark.parametrize(
    ("code", "content", "line", "field"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_invalid_file_is_refused_with_line_field_and_code(
    client: TestClient,
    tenant_a: Tenant,
    settings: Settings,
    code: str,
    content: bytes,
    line: int,
    field: str,
    monkeypatch: pytest.MonkeyPatch,
):
    settings.max_line_bytes = 4096
    padded = content if code == "too_few_examples" else content + jsonl(*[GOOD] * 10)
    response = upload(client, tenant_a, padded)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert error["code"] == code
    assert {"line": line, "field": field, "code": code} == {
        k: error["problems"][0][k] for k in ("line", "field", "code")
    }
    assert stored_files(settings) == []
    assert client.get("/v1/files", headers=tenant_a.headers).json()["data"] == []


def test_problem_list_is_capped_at_100_with_a_total(client: TestClient, tenant_a: Tenant):
    response = upload(client, tenant_a, jsonl(*["{bad"] * 150))
    error = response.json()["error"]
    assert len(error["problems"]) == 100
    assert error["problem_count"] == 150
    assert [p["line"] for p in error["problems"][:3]] == [1, 2, 3]


def test_bom_crlf_and_blank_lines_are_accepted(client: TestClient, tenant_a: Tenant):
    content = b"\xef\xbb\xbf" + chat_dataset(12).replace(b"\n", b"\r\n") + b"\r\n\r\n"
    response = upload(client, tenant_a, content)
    assert response.status_code == 200, response.text
    assert response.json()["stats"]["examples"] == 12


def test_a_purpose_openai_does_not_list_is_refused(client: TestClient, tenant_a: Tenant):
    response = upload(client, tenant_a, chat_dataset(12), purpose="training")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"


def test_declared_oversize_upload_gets_413(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    response = upload(client, tenant_a, b"x" * (settings.max_upload_bytes * 2))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert stored_files(settings) == []


def test_chunked_upload_twice_the_cap_gets_413_and_leaves_nothing(
    client: TestClient, tenant_a: Tenant, settings: Settings
):
    boundary = "loraforgeboundary"
    line = jsonl(GOOD)
    repeats = (settings.max_upload_bytes * 2) // len(line) + 1

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f'fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        for _ in range(repeats):
            yield line
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/files",
        headers={**tenant_a.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert response.status_code == 413
    assert stored_files(settings) == []
    assert list((settings.data_dir / "files").rglob("*.part")) == []


def test_non_multipart_body_is_refused(client: TestClient, tenant_a: Tenant):
    response = client.post("/v1/files", headers=tenant_a.headers, json={"file": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_type"
