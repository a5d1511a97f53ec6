"""DPO jobs in OpenAI's shape: `method: {"type": "dpo", "dpo": {"hyperparameters"}}` trains on
preference files only, resolves beta and its own learning rate, and shows the method back."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job
from app.schemas.spec import ResolvedSpec
from tests.api.test_parent_models import succeeded_parent
from tests.conftest import create_job, upload
from tests.factories import Tenant, add_checkpoint, preference_dataset


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


@pytest.fixture
def preference_file(client: TestClient, tenant_a: Tenant) -> str:
    response = upload(client, tenant_a, preference_dataset(12))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_a_dpo_job_resolves_beta_and_its_learning_rate_and_shows_openais_method(
    client: TestClient, tenant_a: Tenant, preference_file: str
):
    response = create_job(client, tenant_a, preference_file, method=dpo())
    assert response.status_code == 200, response.text
    job = response.json()
    # 12 pairs: OpenAI's rule gives ceil(100 / 12) = 9 epochs, as for 12 examples.
    resolved = {"n_epochs": 9, "batch_size": 4, "learning_rate_multiplier": 1.0, "beta": 0.1}
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": resolved}}
    assert job["hyperparameters"] == resolved
    assert job["training"]["learning_rate"] == 2e-5


def test_explicit_dpo_hyperparameters_are_kept(
    client: TestClient,
    tenant_a: Tenant,
    preference_file: str,
    session_factory: sessionmaker[Session],
):
    method = dpo(beta=0.5, n_epochs=2, learning_rate_multiplier=0.5)
    job = create_job(client, tenant_a, preference_file, method=method).json()
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.5
    assert job["training"]["learning_rate"] == 1e-5
    with session_factory() as session:
        spec = ResolvedSpec.model_validate(session.get_one(Job, job["id"]).spec)
    resolved = spec.hyperparameters
    assert (spec.method, resolved.beta, resolved.n_epochs) == ("dpo", 0.5, 2)


def test_a_supervised_job_shows_no_beta(client: TestClient, tenant_a: Tenant, training_file: str):
    job = create_job(client, tenant_a, training_file).json()
    assert "beta" not in job["hyperparameters"]
    assert job["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": job["hyperparameters"]},
    }


def test_a_dpo_job_on_a_chat_file_is_refused_naming_the_format_it_needs(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    response = create_job(client, tenant_a, training_file, method=dpo())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_file_format", "training_file")
    assert "a dpo job trains on preference files" in error["message"]


def test_a_supervised_job_on_a_preference_file_is_refused(
    client: TestClient, tenant_a: Tenant, preference_file: str
):
    response = create_job(client, tenant_a, preference_file)
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_file_format", "training_file")
    assert "DPO" in error["message"]


def test_a_validation_file_must_be_pairs_too(
    client: TestClient, tenant_a: Tenant, preference_file: str, training_file: str
):
    response = create_job(
        client, tenant_a, preference_file, validation_file=training_file, method=dpo()
    )
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_file_format", "validation_file")
    accepted = create_job(
        client, tenant_a, preference_file, validation_file=preference_file, method=dpo()
    )
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    "method",
    [
        {"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        {"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.2}}},
    ],
    ids=["dpo-with-supervised", "supervised-with-dpo"],
)
def test_a_method_whose_object_is_not_its_type_is_refused(
    client: TestClient, tenant_a: Tenant, preference_file: str, method: dict[str, Any]
):
    response = create_job(client, tenant_a, preference_file, method=method)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("method")
    assert f"go in method.{method['type']}" in error["message"]


@pytest.mark.parametrize("beta", [0, 2.5, -1])
def test_beta_outside_openais_bounds_is_refused(
    client: TestClient, tenant_a: Tenant, preference_file: str, beta: float
):
    response = create_job(client, tenant_a, preference_file, method=dpo(beta=beta))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "method.dpo.hyperparameters.beta"


def test_the_deprecated_top_level_hyperparameters_are_supervised_only(
    client: TestClient, tenant_a: Tenant, preference_file: str
):
    response = create_job(
        client, tenant_a, preference_file, method=dpo(), hyperparameters={"n_epochs": 2}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "hyperparameters"
    assert "method.dpo.hyperparameters" in error["message"]


def test_a_fine_tuned_model_can_be_tuned_further_with_dpo(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    preference_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    response = create_job(
        client, tenant_a, preference_file, model=parent.fine_tuned_model, method=dpo()
    )
    assert response.status_code == 200, response.text
    child = response.json()
    assert child["model"] == parent.fine_tuned_model
    assert child["method"]["type"] == "dpo"
    with session_factory() as session:
        spec = ResolvedSpec.model_validate(session.get_one(Job, child["id"]).spec)
    assert spec.parent is not None and spec.parent.job_id == parent.id
    assert spec.method == "dpo"


def test_an_estimate_of_a_dpo_job_counts_two_sequences_a_pair(
    client: TestClient, tenant_a: Tenant, preference_file: str, training_file: str
):
    def estimate(file_id: str, **fields: Any) -> Any:
        body = {"model": "loraforge/tiny-random-llama", "training_file": file_id, **fields}
        return client.post("/v1/fine_tuning/estimates", headers=tenant_a.headers, json=body).json()

    pairs = estimate(preference_file, method=dpo(batch_size=2))
    supervised = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}}
    examples = estimate(training_file, method=supervised)
    assert pairs["method"] == "dpo"
    assert pairs["hyperparameters"]["beta"] == 0.1
    assert "beta" not in examples["hyperparameters"]
    assert pairs["memory"]["activations_bytes"] == examples["memory"]["activations_bytes"]


def test_checkpoint_metrics_carry_the_dpo_figures(
    client: TestClient,
    tenant_a: Tenant,
    preference_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = create_job(client, tenant_a, preference_file, method=dpo()).json()["id"]
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        checkpoint = add_checkpoint(session, job, 5, 0.6)
        checkpoint.metrics = checkpoint.metrics | {
            "full_valid_preference_accuracy": 0.75,
            "full_valid_reward_margin": 0.42,
        }
        session.commit()
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant_a.headers)
    metrics = listed.json()["data"][0]["metrics"]
    assert metrics["full_valid_preference_accuracy"] == 0.75
    assert metrics["full_valid_reward_margin"] == 0.42
