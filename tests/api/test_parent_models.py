"""Fine-tuning a fine-tuned model: `model` names the organization's fine_tuned_model or a
checkpoint; the new job keeps the base, names its parent, and takes the parent's LoRA."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job
from app.schemas.spec import ResolvedSpec
from tests.conftest import create_job, upload
from tests.factories import Tenant, add_checkpoint, chat_dataset, set_job_status

BASE = "loraforge/tiny-random-llama"
PARENT_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def succeeded_parent(
    client: TestClient, tenant: Tenant, training_file: str, factory: sessionmaker[Session]
) -> Job:
    """A job of `tenant` that succeeded with a fine-tuned model (as a worker leaves it)."""
    created = create_job(client, tenant, training_file, suffix="first", lora=PARENT_LORA)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    set_job_status(factory, job_id, "succeeded")
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.fine_tuned_model = f"ft:{BASE}:acme:first:{job_id[6:14]}"
        add_checkpoint(session, job, 5, 1.0)
        session.commit()
        session.refresh(job)
        session.expunge(job)
        return job


def test_a_job_on_a_fine_tuned_model_keeps_its_base_and_names_its_parent(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    response = create_job(client, tenant_a, training_file, model=parent.fine_tuned_model)
    assert response.status_code == 200, response.text
    child = response.json()
    assert child["model"] == parent.fine_tuned_model  # as OpenAI shows it
    assert child["lora"] == PARENT_LORA  # inherited: the parent's adapter is the start
    with session_factory() as session:
        row = session.get_one(Job, child["id"])
        spec = ResolvedSpec.model_validate(row.spec)
    assert (row.model, spec.model) == (BASE, BASE)
    assert spec.parent is not None
    assert (spec.parent.model, spec.parent.job_id, spec.parent.step) == (
        parent.fine_tuned_model,
        parent.id,
        None,
    )


def test_a_checkpoint_name_is_a_parent_too(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    checkpoint = f"ft:{BASE}:ckpt-step-5"
    response = create_job(client, tenant_a, training_file, model=checkpoint)
    assert response.status_code == 200, response.text
    with session_factory() as session:
        spec = ResolvedSpec.model_validate(session.get_one(Job, response.json()["id"]).spec)
    assert spec.parent is not None
    assert (spec.parent.job_id, spec.parent.step) == (parent.id, 5)


def test_the_estimate_of_a_fine_tuned_model_is_its_bases_with_the_parents_lora(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    body = {"model": parent.fine_tuned_model, "training_file": training_file}
    response = client.post("/v1/fine_tuning/estimates", json=body, headers=tenant_a.headers)
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert estimate["model"] == BASE  # the base's shape is what the memory is counted on
    assert estimate["lora"] == PARENT_LORA
    assert estimate["memory"]["total_bytes"] > 0
    as_base = client.post(
        "/v1/fine_tuning/estimates",
        json={**body, "model": BASE, "lora": PARENT_LORA},
        headers=tenant_a.headers,
    ).json()
    assert estimate["memory"] == as_base["memory"]


def test_lora_that_does_not_fit_the_parents_adapter_is_refused(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    wider = create_job(
        client,
        tenant_a,
        training_file,
        model=parent.fine_tuned_model,
        lora={**PARENT_LORA, "r": 16},
    )
    assert wider.status_code == 400
    error = wider.json()["error"]
    assert (error["code"], error["param"]) == ("parent_lora_mismatch", "lora.r")
    # The same shape with another dropout is the parent's adapter trained differently: fine.
    other_dropout = create_job(
        client,
        tenant_a,
        training_file,
        model=parent.fine_tuned_model,
        lora={**PARENT_LORA, "dropout": 0.1},
    )
    assert other_dropout.status_code == 200, other_dropout.text


def test_another_organizations_model_reads_as_an_unknown_model(
    client: TestClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    theirs = upload(client, tenant_b, chat_dataset(12)).json()["id"]
    responses = [
        create_job(client, tenant_b, theirs, model=name)
        for name in (parent.fine_tuned_model, f"ft:{BASE}:ckpt-step-5", "ft:nothing:at:all:0")
    ]
    errors = [
        (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) for r in responses
    ]
    assert errors == [(400, "model_not_found", "model")] * 3


def test_a_parent_that_has_not_succeeded_or_was_deleted_is_not_found(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    parent = succeeded_parent(client, tenant_a, training_file, session_factory)
    assert client.delete(
        f"/v1/models/{parent.fine_tuned_model}", headers=tenant_a.headers
    ).is_success
    response = create_job(client, tenant_a, training_file, model=parent.fine_tuned_model)
    assert response.json()["error"]["code"] == "model_not_found"
