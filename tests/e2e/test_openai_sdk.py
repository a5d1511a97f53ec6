"""The official openai SDK against a live `loraforge api` on 127.0.0.1 with a key made by
`loraforge keys create`: files, jobs (auto-paging), events, checkpoints and error classes."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.config import Settings
from tests.factories import chat_dataset, jsonl
from tests.live import api_server, loraforge


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("live")
    env = {"LORAFORGE_DATA_DIR": str(root / "data")}
    with api_server(env, root / "api.log") as base_url:
        yield base_url, env


def make_client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)


def new_key(env: dict[str, str], org: str) -> str:
    created = loraforge(env, "keys", "create", "--org", org)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lf-"), created.stdout
    return lines[0]


def test_sdk_uploads_creates_pages_retrieves_and_cancels(server: tuple[str, dict[str, str]]):
    base_url, env = server
    client = make_client(base_url, new_key(env, "sdk-org"))
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_dataset(12))), purpose="fine-tune"
    )
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(chat_dataset(12))
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert client.files.content(uploaded.id).content == chat_dataset(12)

    created = [
        client.fine_tuning.jobs.create(
            model="loraforge/tiny-random-llama",
            training_file=uploaded.id,
            suffix=f"run{i}",
            seed=i,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        )
        for i in range(5)
    ]
    assert all(job.status == "queued" for job in created)
    assert created[0].hyperparameters.n_epochs == 1
    # Auto-paging follows has_more/after across three pages of two.
    listed = [job.id for job in client.fine_tuning.jobs.list(limit=2)]
    assert listed == [job.id for job in reversed(created)]

    job = client.fine_tuning.jobs.retrieve(created[0].id)
    assert job.model == "loraforge/tiny-random-llama" and job.seed == 0
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))
    assert events[0].message == "Fine-tuning job cancelled"
    assert events[-1].message.startswith("Created fine-tuning job")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data == []


def test_sdk_raises_the_mapped_error_classes(server: tuple[str, dict[str, str]]):
    base_url, env = server
    client = make_client(base_url, new_key(env, "sdk-errors"))
    with pytest.raises(openai.NotFoundError) as not_found:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert not_found.value.code == "job_not_found"
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.fine_tuning.jobs.create(model="gpt-nope", training_file="file-x")
    assert bad_model.value.code == "model_not_found"
    assert bad_model.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.files.create(
            file=("bad.jsonl", io.BytesIO(jsonl({"messages": []}))), purpose="fine-tune"
        )
    assert bad_file.value.code == "missing_messages_list"
    assert bad_file.value.body["problems"][0]["line"] == 1  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        make_client(base_url, "lf-not-a-key").files.list()
    # A request that fails its schema is a BadRequestError too, naming the parameter.
    with pytest.raises(openai.BadRequestError) as bad_limit:
        client.files.list(limit=0)
    assert (bad_limit.value.code, bad_limit.value.param) == ("invalid_request_body", "limit")
    with pytest.raises(openai.BadRequestError) as bad_body:
        client.fine_tuning.jobs.create(
            model="loraforge/tiny-random-llama",
            training_file="file-x",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
        )
    assert bad_body.value.param == "method.supervised.hyperparameters.n_epochs"


def test_sdk_uploads_a_file_in_parts_and_trains_on_it(server: tuple[str, dict[str, str]]):
    """upload_file_chunked: create, parts, complete; the file is validated as a whole."""
    base_url, env = server
    client = make_client(base_url, new_key(env, "sdk-uploads"))
    content = chat_dataset(40)
    uploaded = client.uploads.upload_file_chunked(
        file=content,
        filename="big.jsonl",
        bytes=len(content),
        mime_type="text/jsonl",
        purpose="fine-tune",
        part_size=1024,
        md5=hashlib.md5(content).hexdigest(),
    )
    assert uploaded.status == "completed" and uploaded.file is not None
    assert (uploaded.file.bytes, uploaded.file.purpose) == (len(content), "fine-tune")
    assert client.files.content(uploaded.file.id).content == content
    job = client.fine_tuning.jobs.create(
        model="loraforge/tiny-random-llama",
        training_file=uploaded.file.id,
        suffix="from parts: v1",
        metadata={"source": "uploads"},
    )
    assert job.suffix == "from parts: v1" and job.integrations == []
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"source": "uploads"})] == [job.id]
    assert list(client.fine_tuning.jobs.list(metadata={"source": "other"})) == []

    bad = jsonl({"messages": []}) * 20
    with pytest.raises(openai.BadRequestError) as refused:
        client.uploads.upload_file_chunked(
            file=bad, filename="bad.jsonl", bytes=len(bad), mime_type="text/jsonl",
            purpose="fine-tune", part_size=100,
        )  # fmt: skip
    assert refused.value.code == "missing_messages_list"

    pending = client.uploads.create(
        bytes=10, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    client.uploads.parts.create(upload_id=pending.id, data=b"0123456789")
    assert client.uploads.cancel(pending.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.uploads.parts.create(upload_id=pending.id, data=b"0")


def test_sdk_files_take_every_purpose_expiry_and_order(server: tuple[str, dict[str, str]]):
    base_url, env = server
    client = make_client(base_url, new_key(env, "sdk-files"))
    kept = client.files.create(
        file=("t.jsonl", io.BytesIO(chat_dataset(12))),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert kept.expires_at == kept.created_at + 3600
    batch = client.files.create(file=("b.jsonl", io.BytesIO(b"anything")), purpose="batch")
    assert batch.purpose == "batch" and batch.expires_at is not None
    assert [f.id for f in client.files.list(order="asc")] == [kept.id, batch.id]
    assert [f.id for f in client.files.list(order="desc", limit=1)] == [batch.id, kept.id]
    assert [f.id for f in client.files.list(purpose="batch")] == [batch.id]
    with pytest.raises(openai.BadRequestError) as not_training_data:
        client.fine_tuning.jobs.create(model="loraforge/tiny-random-llama", training_file=batch.id)
    assert not_training_data.value.code == "invalid_file_purpose"


def test_revoked_key_stops_working(server: tuple[str, dict[str, str]], tmp_path: Path):
    base_url, env = server
    key = new_key(env, "revokers")
    client = make_client(base_url, key)
    assert client.files.list().data == []
    listed = loraforge(env, "keys", "list", "--org", "revokers")
    assert key not in listed.stdout and key[-4:] in listed.stdout
    key_id = listed.stdout.split('"id": "')[1].split('"')[0]
    assert loraforge(env, "keys", "revoke", key_id).returncode == 0
    # The API process remembers a good key for LORAFORGE_API_KEY_CACHE_S (default 5 s).
    revoked_at = time.monotonic()
    deadline = revoked_at + Settings.model_fields["api_key_cache_s"].default + 2
    while True:
        try:
            client.files.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still works past the cache's ttl"
        time.sleep(0.2)
