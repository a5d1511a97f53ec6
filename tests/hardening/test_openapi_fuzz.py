"""Schemathesis against the app's own OpenAPI schema: every operation, valid and invalid
inputs, a valid key and seeded objects. No response may be a 5xx, and every response must be
documented (status code, content type, headers, body schema).

Bounded for CI: FUZZ_EXAMPLES examples per operation and mode (LORAFORGE_FUZZ_EXAMPLES raises
it for a deeper local run), derandomized so a CI failure reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.main import create_app
from tests.conftest import RecordingEnqueuer
from tests.databases import database
from tests.factories import Tenant, chat_dataset, create_tenant
from tests.hardening.seed import MODEL, Seeded, seed_organization

FUZZ_EXAMPLES = int(os.environ.get("LORAFORGE_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EVENTS_OPERATION = "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events"


def fuzz_settings(data_dir: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url="memory://",
        max_upload_bytes=64 * 1024,
        max_line_bytes=16 * 1024,
        min_training_examples=1,
        event_poll_interval_s=0.01,
        # Limits have tests of their own; here they would only stop the fuzzer early.
        rate_limit_per_minute=0,
        max_concurrent_jobs=0,
        max_files=0,
        max_stored_bytes=0,
        _env_file=None,  # type: ignore[call-arg]
    )


def operation_cases() -> list[tuple[str, GenerationMode]]:
    """("METHOD /path", mode) for every operation in the schema (the route table; no database
    needed): valid inputs for all, invalid ones for those that take a body or a constrained
    parameter (an unconstrained path string has no invalid value)."""
    app = create_app(fuzz_settings(Path("unused"), "sqlite://"), enqueuer=RecordingEnqueuer())
    cases = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            parameters = [p for p in operation.get("parameters", []) if p["in"] != "path"]
            if parameters or operation.get("requestBody"):
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@dataclass
class FuzzTarget:
    app: FastAPI
    schema: Any
    tenant: Tenant
    data_dir: Path

    def seed(self) -> Seeded:
        factory = self.app.state.session_factory
        return seed_organization(factory, self.data_dir, self.tenant.organization_id)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with database(request.param, tmp) as url:
        settings_ = fuzz_settings(tmp / "data", url)
        app = create_app(settings_, enqueuer=RecordingEnqueuer())
        with TestClient(app):  # migrations run in the lifespan
            tenant = create_tenant(app.state.session_factory, "acme")
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            # Unknown query parameters are ignored, as OpenAI's API does; the key is ours to send.
            schema.config.generation.update(
                allow_extra_parameters=False, with_security_parameters=False
            )
            yield FuzzTarget(app, schema, tenant, settings_.data_dir)
            app.state.engine.dispose()


def use_seeded_objects(case: Any, seeded: Seeded, data: st.DataObject) -> None:
    """Often swap generated ids (and upload contents) for real ones, so that the fuzzer gets
    past the 404s and 400s into every route's success path."""
    names = set(case.path_parameters or {})
    fitting = [
        {name: ids[name] for name in names} for ids in seeded.path_ids() if names <= set(ids)
    ]
    chosen = data.draw(st.sampled_from([None, *fitting]), label="seeded path") if names else None
    if chosen is not None:
        case.path_parameters.update(chosen)
    if not isinstance(case.body, dict):
        return
    real = {
        "training_file": seeded.file_id,
        "validation_file": seeded.file_id,
        "model": MODEL,
        "file": chat_dataset(12),
        "url": "https://8.8.8.8/hooks",  # a public address: a webhook needs no DNS
    }
    for name, value in real.items():
        if name in case.body and data.draw(st.booleans(), label=f"real {name}"):
            case.body[name] = value


def bound_stream(case: Any, seeded: Seeded) -> None:
    """A stream of a job that has not ended never ends: streams go to a finished job."""
    if case.operation.label == EVENTS_OPERATION and "stream" in (case.query or {}):
        case.path_parameters["fine_tuning_job_id"] = seeded.terminal_job_id


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("label", "mode"), operation_cases())
def test_operation_answers_within_its_documented_schema(
    target: FuzzTarget, label: str, mode: GenerationMode
):
    operation = target.schema.find_operation_by_label(label)
    assert operation is not None, label
    seeded = target.seed()
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, data: st.DataObject) -> None:
        if mode is GenerationMode.POSITIVE:
            use_seeded_objects(case, seeded, data)
        bound_stream(case, seeded)
        response = case.call_and_validate(headers=target.tenant.headers, checks=checks)
        statuses.add(response.status_code)

    fuzz()
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in statuses), f"never succeeded: {statuses}"
