"""Jobs refused at creation, before a worker loads anything: LoRA targets the model does not
have, and jobs larger than any worker's memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.conftest import RecordingEnqueuer, create_job
from tests.factories import Tenant

GiB = 1 << 30
# A batch no machine holds: hundreds of GiB of logits and activations even for the tiny model.
HUGE = {
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 256}}},
    "training": {"max_seq_length": 131_072, "gradient_checkpointing": False},
}


def mistral_config(directory: Path) -> Path:
    """A local catalog model's config.json (no weights: the API never loads them)."""
    directory.mkdir()
    config = {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def with_targets(*targets: str) -> dict[str, Any]:
    return {"lora": {"target_modules": list(targets)}}


def test_an_unknown_target_module_of_the_builtin_model_is_refused(
    client: TestClient, tenant_a: Tenant, training_file: str, enqueuer: RecordingEnqueuer
):
    response = create_job(client, tenant_a, training_file, **with_targets("q_proj", "c_attn"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_target_module", "lora.target_modules")
    assert "'c_attn'" in error["message"] and "q_proj" in error["message"]
    assert enqueuer.sent == []


@pytest.mark.parametrize(
    "targets",
    [
        ("q_proj", "v_proj"),
        ("self_attn.o_proj", "mlp.down_proj", "lm_head"),
        ("model.layers.1.mlp.gate_proj",),
    ],
)
def test_targets_that_name_linear_layers_are_accepted(
    client: TestClient, tenant_a: Tenant, training_file: str, targets: tuple[str, ...]
):
    response = create_job(client, tenant_a, training_file, **with_targets(*targets))
    assert response.status_code == 200, response.text


def test_targets_are_checked_against_a_local_models_config(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings, tmp_path: Path
):
    settings.models = {"local/mistral": {"path": str(mistral_config(tmp_path / "mistral"))}}
    body = {"model": "local/mistral"}
    a_layer_it_lacks = create_job(
        client, tenant_a, training_file, **body, **with_targets("model.layers.32.mlp.up_proj")
    )
    assert a_layer_it_lacks.status_code == 400
    assert a_layer_it_lacks.json()["error"]["code"] == "unknown_target_module"
    assert create_job(client, tenant_a, training_file, **body, **with_targets("up_proj")).is_success


def test_targets_of_an_architecture_not_known_here_are_left_to_the_worker(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings, tmp_path: Path
):
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    settings.models = {"local/gpt2": {"path": str(unknown)}}
    response = create_job(
        client, tenant_a, training_file, model="local/gpt2", **with_targets("c_attn")
    )
    assert response.status_code == 200, response.text


def test_an_estimate_names_an_unknown_target_module_too(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    body = {
        "model": "loraforge/tiny-random-llama",
        "training_file": training_file,
        **with_targets("c_attn"),
    }
    response = client.post("/v1/fine_tuning/estimates", headers=tenant_a.headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_target_module"


def test_a_job_larger_than_the_workers_memory_is_refused(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    enqueuer: RecordingEnqueuer,
):
    settings.worker_memory_bytes = 16 * GiB
    response = create_job(client, tenant_a, training_file, **HUGE)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "the workers have 16.00 GiB" in error["message"]
    assert enqueuer.sent == []


def test_a_job_within_the_workers_memory_goes_to_the_training_queue(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    settings: Settings,
    enqueuer: RecordingEnqueuer,
):
    settings.worker_memory_bytes = 16 * GiB
    assert create_job(client, tenant_a, training_file).status_code == 200
    assert enqueuer.sent[-1].queue == settings.job_queue


def test_without_any_memory_setting_the_api_cannot_know_and_accepts(
    client: TestClient, tenant_a: Tenant, training_file: str, settings: Settings
):
    assert settings.worker_memory_bytes is None and not settings.queue_memory
    assert create_job(client, tenant_a, training_file, **HUGE).status_code == 200
