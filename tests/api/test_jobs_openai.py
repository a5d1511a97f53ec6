"""Jobs as OpenAI's API has them: the metadata filter on lists, suffix and
learning_rate_multiplier bounds, integrations as a list."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.schemas.spec import DEFAULT_LEARNING_RATE
from app.services.jobs import fine_tuned_model_name
from tests.conftest import create_job
from tests.factories import Tenant


def listed(client: TestClient, tenant: Tenant, query: str) -> list[str]:
    response = client.get(f"/v1/fine_tuning/jobs?{query}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def test_the_metadata_filter_returns_only_jobs_with_every_pair(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, training_file: str
):
    def job(metadata: dict[str, str] | None) -> str:
        response = create_job(client, tenant_a, training_file, metadata=metadata)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    team_a_1 = job({"team": "a", "run": "1"})
    team_a_2 = job({"team": "a", "run": "2"})
    team_b = job({"team": "b"})
    empty = job({"team": ""})
    odd_key = job({'we"ird.key]': "v"})
    without = job(None)

    assert listed(client, tenant_a, "metadata[team]=a") == [team_a_2, team_a_1]
    assert listed(client, tenant_a, "metadata[team]=a&metadata[run]=1") == [team_a_1]
    assert listed(client, tenant_a, "metadata%5Bteam%5D=b") == [team_b]
    assert listed(client, tenant_a, "metadata[team]=") == [empty]
    assert listed(client, tenant_a, 'metadata[we"ird.key]]=v') == [odd_key]
    assert listed(client, tenant_a, "metadata[team]=c") == []
    assert listed(client, tenant_a, "metadata=null") == [without]
    assert listed(client, tenant_b, "metadata[team]=a") == []
    first = client.get(
        "/v1/fine_tuning/jobs?metadata[team]=a&limit=1", headers=tenant_a.headers
    ).json()
    assert [j["id"] for j in first["data"]] == [team_a_2] and first["has_more"] is True
    assert listed(client, tenant_a, f"metadata[team]=a&after={team_a_2}") == [team_a_1]


@pytest.mark.parametrize(
    "query",
    ["metadata=x", "metadata=null&metadata[team]=a", "metadata[]=a", "metadata[k]=a&metadata[k]=b"],
)
def test_a_malformed_metadata_filter_is_a_400(client: TestClient, tenant_a: Tenant, query: str):
    response = client.get(f"/v1/fine_tuning/jobs?{query}", headers=tenant_a.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("metadata", "invalid_metadata_filter")


def test_a_suffix_of_up_to_64_characters_is_kept_and_normalized_in_the_model_name(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    suffix = "Run 7: fr/de é" + "x" * 50
    created = create_job(client, tenant_a, training_file, suffix=suffix)
    assert created.status_code == 200, created.text
    assert created.json()["suffix"] == suffix
    too_long = create_job(client, tenant_a, training_file, suffix="x" * 65)
    assert (too_long.status_code, too_long.json()["error"]["param"]) == (400, "suffix")
    name = fine_tuned_model_name("base/model", "Acme Inc", suffix, "ftjob-0123456789ab")
    assert name == f"ft:base/model:acme-inc:Run-7-fr-de-{'x' * 50}:01234567"
    assert fine_tuned_model_name("m", "o", ":::", "ftjob-abcdef123") == "ft:m:o::abcdef12"


@pytest.mark.parametrize("multiplier", [0.001, 10, 50, 1e6])
def test_any_learning_rate_multiplier_above_zero_is_accepted(
    client: TestClient, tenant_a: Tenant, training_file: str, multiplier: float
):
    hyperparameters: dict[str, Any] = {"learning_rate_multiplier": multiplier}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    created = create_job(client, tenant_a, training_file, method=method)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["hyperparameters"]["learning_rate_multiplier"] == multiplier
    assert job["training"]["learning_rate"] == pytest.approx(DEFAULT_LEARNING_RATE * multiplier)


@pytest.mark.parametrize("multiplier", [0, -1])
def test_a_learning_rate_multiplier_of_zero_or_less_is_a_400(
    client: TestClient, tenant_a: Tenant, training_file: str, multiplier: float
):
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"learning_rate_multiplier": multiplier}},
    }
    response = create_job(client, tenant_a, training_file, method=method)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_integrations_is_an_empty_list_not_null(
    client: TestClient, tenant_a: Tenant, training_file: str
):
    job_id = create_job(client, tenant_a, training_file).json()["id"]
    shown = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant_a.headers).json()
    assert shown["integrations"] == []
    assert (
        client.get("/v1/fine_tuning/jobs", headers=tenant_a.headers).json()["data"][0][
            "integrations"
        ]
        == []
    )
