"""POST /v1/fine_tuning/estimates: the memory a job would need and its queue, validated as
job creation validates, with nothing created or enqueued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, JobEvent
from app.memory import TINY_RANDOM_LLAMA_SHAPE, estimate_memory
from app.schemas.spec import ResolvedSpec
from tests.conftest import RecordingEnqueuer, create_job, upload
from tests.factories import Tenant, chat_dataset

GiB = 1 << 30
PARTS = (
    "linear_weights",
    "embeddings",
    "lora_params",
    "gradients",
    "optimizer_state",
    "activations",
    "cuda_context",
)


def estimate(client: TestClient, tenant: Tenant, training_file: str, **fields: Any) -> Any:
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file, **fields}
    return client.post("/v1/fine_tuning/estimates", headers=tenant.headers, json=body)


def test_estimate_matches_the_memory_model_part_by_part(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    response = estimate(
        client, tenant_a, training_file, lora={"r": 8}, training={"max_seq_length": 256}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "fine_tuning.estimate"
    fields = ("model", "hyperparameters", "lora", "quantization", "training")
    spec = ResolvedSpec.model_validate({"seed": 0, **{f: body[f] for f in fields}})
    expected = estimate_memory(spec, TINY_RANDOM_LLAMA_SHAPE)
    memory = body["memory"]
    for part in PARTS:
        assert memory[f"{part}_bytes"] == getattr(expected, part), part
    assert memory["total_bytes"] == expected.total
    assert memory["total_bytes"] == sum(memory[f"{part}_bytes"] for part in PARTS)
    assert memory["bits_per_quantized_weight"] == expected.bits_per_quantized_weight
    # r x (d_in + d_out) per linear layer: q, o 128+128; k, v 128+64; gate, up, down 128+256.
    assert memory["trainable_parameters"] == 8 * (2 * 256 + 2 * 192 + 3 * 384) * 2
    assert body["queue"] == "training"
    assert body["fits"] is True
    assert body["error"] is None


def test_estimate_resolves_auto_like_job_creation(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    body = estimate(client, tenant_a, training_file).json()
    job = create_job(client, tenant_a, training_file).json()
    for field in ("hyperparameters", "lora", "quantization", "training"):
        assert body[field] == job[field], field
    assert body["hyperparameters"]["n_epochs"] == 9  # OpenAI's rule for 12 examples


def test_estimate_creates_and_enqueues_nothing(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    enqueuer: RecordingEnqueuer,
    session_factory: sessionmaker[Session],
):
    for _ in range(3):
        assert estimate(client, tenant_a, training_file).status_code == 200
    assert enqueuer.sent == []
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 0


def test_bigger_settings_need_more_memory(client: TestClient, tenant_a: Tenant, training_file: str):
    def total(**fields: Any) -> int:
        total_bytes: int = estimate(client, tenant_a, training_file, **fields).json()["memory"][
            "total_bytes"
        ]
        return total_bytes

    base = total()
    assert total(lora={"r": 64}) > base
    assert total(training={"max_seq_length": 4096}) > base
    assert total(quantization={"double_quant": False}) > base

    def bits(**quantization: Any) -> float:
        response = estimate(client, tenant_a, training_file, quantization=quantization)
        value: float = response.json()["memory"]["bits_per_quantized_weight"]
        return value

    assert bits(bits=None) == 16 > bits(bits=8) > bits(double_quant=False) > bits() > 4


def test_estimate_refuses_what_creation_refuses(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, training_file: str
):
    foreign = upload(client, tenant_b, chat_dataset(12)).json()["id"]
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"model": "gpt-9"}, 400, "model", "model_not_found"),
        ({"training_file": "file-nope"}, 400, "training_file", "file_not_found"),
        ({"training_file": foreign}, 400, "training_file", "file_not_found"),
        ({"validation_file": foreign}, 400, "validation_file", "file_not_found"),
        ({"lora": {"r": 0}}, 400, "lora.r", "invalid_request_body"),
        ({"training": {"lr": 1e-4}}, 400, "training.lr", "invalid_request_body"),
    ]
    for fields, status, param, code in cases:
        body = {"training_file": training_file, **fields}
        response = estimate(client, tenant_a, **body)
        created = create_job(client, tenant_a, **body)
        assert response.status_code == created.status_code == status, (fields, response.text)
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["code"] == code


def test_estimate_needs_an_api_key(client: TestClient, training_file: str):
    body = {"model": "loraforge/tiny-random-llama", "training_file": training_file}
    response = client.post("/v1/fine_tuning/estimates", json=body)
    assert response.status_code == 401


def test_estimate_names_the_smallest_worker_class_that_fits(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings
):
    settings.queue_memory = {"gpu-80g": 80 * GiB, "gpu-24g": 24 * GiB, "tiny": 1 << 10}
    body = estimate(client, tenant_a, training_file).json()
    assert body["queue"] == "gpu-24g"
    assert body["fits"] is True


def test_a_job_too_big_for_every_class_gets_its_breakdown_and_the_reason(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings
):
    settings.queue_memory = {"small-gpu": 1 << 20}
    response = estimate(client, tenant_a, training_file)
    assert response.status_code == 200
    body = response.json()
    assert body["fits"] is False
    assert body["queue"] is None
    assert body["error"]["code"] == "insufficient_memory"
    assert body["memory"]["total_bytes"] > 1 << 20
    # Creation refuses the same request with the same reason.
    assert create_job(client, tenant_a, training_file).json()["error"]["code"] == (
        "insufficient_memory"
    )


def test_model_of_unknown_shape_has_no_breakdown_and_goes_to_the_largest_class(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    tmp_path: Path,
):
    known, unknown = tmp_path / "known", tmp_path / "unknown"
    known.mkdir()
    unknown.mkdir()
    config = {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    }
    (known / "config.json").write_text(json.dumps(config))
    settings.models = {"local/known": {"path": str(known)}, "local/unknown": {"path": str(unknown)}}
    settings.queue_memory = {"gpu-80g": 80 * GiB, "gpu-24g": 24 * GiB}
    unknown_body = estimate(client, tenant_a, training_file, model="local/unknown").json()
    assert unknown_body["memory"] is None
    assert unknown_body["queue"] == "gpu-80g"
    known_body = estimate(client, tenant_a, training_file, model="local/known").json()
    assert 1 * GiB < known_body["memory"]["total_bytes"] < 24 * GiB
    assert known_body["queue"] == "gpu-24g"
