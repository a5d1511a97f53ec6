"""Integrations on job creation: OpenAI's shape, refused where the operator set none up."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import create_job
from tests.factories import Tenant


def test_an_integration_the_operator_did_not_set_up_is_refused(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    # The fixture's settings configure neither W&B nor MLflow.
    for integration in (
        {"type": "wandb", "wandb": {"project": "p"}},
        {"type": "mlflow", "mlflow": {"experiment": "e"}},
    ):
        response = create_job(client, tenant_a, training_file, integrations=[integration])
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("integration_not_configured", "integrations.0")


def test_unknown_integration_types_and_fields_are_refused(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    for integration in (
        {"type": "comet", "comet": {"project": "p"}},
        {"type": "wandb", "wandb": {"project": "p", "base_url": "http://evil"}},
        {"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "http://evil"}},
    ):
        response = create_job(client, tenant_a, training_file, integrations=[integration])
        assert response.status_code == 400, (integration, response.text)
