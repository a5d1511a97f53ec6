"""Schemathesis against the app's own OpenAPI schema, with every check it has (`--checks
all`): no 5xx, every response documented (status, content type, headers, body), schema-valid
requests accepted and schema-invalid ones refused, `Allow` on 405s, no resource that outlives
its DELETE... Where a schema-valid request may still be refused for a reason a schema cannot
state (a dataset's contents, an unknown model), schemathesis.toml at the repository root says
so, operation by operation; the CLI run reads the same file.

Two runs:
- in-process, per operation and mode, on SQLite and PostgreSQL, with seeded objects swapped
  into the generated requests so every route's success path is reached;
- the `schemathesis run` command against a live `loraforge api` with a seeded organization,
  through all its phases (examples, coverage, fuzzing, stateful: following the schema's links
  from created and listed objects to the operations that take them).

Bounded for CI: FUZZ_EXAMPLES examples per operation and mode (LORAFORGE_FUZZ_EXAMPLES raises
it for a deeper local run), with a fixed seed so a CI failure reproduces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from sqlalchemy import select

from app.config import Settings
from app.db.models import Organization
from app.db.session import make_engine, make_session_factory
from app.main import create_app
from tests.conftest import RecordingEnqueuer
from tests.databases import database
from tests.factories import Tenant, chat_dataset, create_tenant
from tests.hardening.seed import MODEL, Seeded, seed_organization
from tests.live import api_server, free_port, loraforge, start_inference, stop
from worker.inference.server import create_inference_app

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "schemathesis.toml"
FUZZ_EXAMPLES = int(os.environ.get("LORAFORGE_FUZZ_EXAMPLES", "25"))
SEED = 20261203
EVENTS_OPERATION = "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events"


def all_checks() -> list[Any]:
    """Every check schemathesis has, as `--checks all` selects them."""
    load_all_checks()
    return list(CHECKS.get_all())


FUZZ_ENVIRONMENT = {
    "LORAFORGE_BROKER_URL": "memory://",
    "LORAFORGE_MAX_UPLOAD_BYTES": str(64 * 1024),
    "LORAFORGE_MAX_LINE_BYTES": str(16 * 1024),
    "LORAFORGE_MIN_TRAINING_EXAMPLES": "1",
    "LORAFORGE_EVENT_POLL_INTERVAL_S": "0.01",
    # Limits have tests of their own; here they would only stop the fuzzer early.
    "LORAFORGE_RATE_LIMIT_PER_MINUTE": "0",
    "LORAFORGE_MAX_CONCURRENT_JOBS": "0",
    "LORAFORGE_MAX_FILES": "0",
    "LORAFORGE_MAX_STORED_BYTES": "0",
    "LORAFORGE_MAX_CONCURRENT_UPLOADS": "0",
    "LORAFORGE_MAX_CONCURRENT_GENERATIONS": "0",
    # Chat and completions generate on the tiny model: a token or two each keeps it quick.
    "LORAFORGE_INFERENCE_MAX_TOKENS": "2",
}


def fuzz_settings(data_dir: Path, database_url: str) -> Settings:
    values = {
        name.removeprefix("LORAFORGE_").lower(): value for name, value in FUZZ_ENVIRONMENT.items()
    }
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        _env_file=None,  # type: ignore[call-arg]
        **values,  # type: ignore[arg-type]
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
        settings_ = fuzz_settings(tmp / "data", url).model_copy(
            update={"inference_url": "http://inference"}
        )
        # Chat and completions reach a real inference server, in this process.
        transport = httpx.ASGITransport(app=create_inference_app(settings_))
        app = create_app(settings_, RecordingEnqueuer(), inference_transport=transport)
        with TestClient(app):  # migrations run in the lifespan
            tenant = create_tenant(app.state.session_factory, "acme")
            config = SchemathesisConfig.from_path(str(CONFIG))
            schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
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
    # Real ids and values come first: hypothesis leans on a strategy's simplest value (the
    # first of sampled_from), so the success path does not hang on a lucky draw.
    chosen = data.draw(st.sampled_from([*fitting, None]), label="seeded path") if names else None
    if chosen is not None:
        case.path_parameters.update(chosen)
    if not isinstance(case.body, dict):
        return
    real = {
        "training_file": seeded.file_id,
        "validation_file": seeded.file_id,
        "model": MODEL,
        "file": chat_dataset(12),
        "part_ids": list(seeded.upload_part_ids),
        "url": "https://8.8.8.8/hooks",  # a public address: a webhook needs no DNS
    }
    for name, value in real.items():
        if name in case.body and data.draw(st.sampled_from([True, False]), label=f"real {name}"):
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
    checks = all_checks()
    statuses: set[int] = set()
    refusals: dict[str, int] = {}  # error codes seen, so a failure says what stood in the way

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
        if response.status_code >= 400:
            key = f"{response.status_code} {error_of(response)}"
            refusals[key] = refusals.get(key, 0) + 1

    fuzz()
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in statuses), f"never succeeded: {refusals}"


def error_of(response: Any) -> str:
    """The error's code and the start of its message, or of the body."""
    try:
        error = response.json()["error"]
        return f"{error.get('code')}: {str(error.get('message'))[:120]}"
    except (ValueError, KeyError, TypeError):
        return response.text[:120]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """`loraforge api` on SQLite with a key and a seeded organization: (URL, key, work dir)."""
    root = tmp_path_factory.mktemp("fuzz-live")
    port = free_port()
    env = {
        **FUZZ_ENVIRONMENT,
        "LORAFORGE_DATA_DIR": str(root / "data"),
        "LORAFORGE_INFERENCE_URL": f"http://127.0.0.1:{port}",
    }
    inference = start_inference(env, port, root / "inference.log")
    with ExitStack() as cleanup:
        cleanup.callback(stop, inference)
        base_url = cleanup.enter_context(api_server(env, root / "api.log"))
        created = loraforge(env, "keys", "create", "--org", "fuzz")
        assert created.returncode == 0, created.stderr
        url = f"sqlite:///{root / 'data' / 'loraforge.db'}"
        engine = make_engine(url)
        try:
            factory = make_session_factory(engine)
            with factory() as session:
                organization_id = session.scalar(
                    select(Organization.id).where(Organization.name == "fuzz")
                )
            assert organization_id is not None
            seed_organization(factory, root / "data", organization_id)
        finally:
            engine.dispose()
        yield base_url, created.stdout.strip(), root


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_run_with_every_check_and_phase_finds_nothing(
    live_api: tuple[str, str, Path],
):
    """What an outside user runs (`schemathesis run --checks all`), from the repository."""
    base_url, key, root = live_api
    command = [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
    ]
    finished = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=840, check=False
    )
    report = finished.stdout[-6000:] + finished.stderr[-2000:]
    assert finished.returncode == 0, report
    assert " passed" in finished.stdout and "failure" not in finished.stdout.lower(), report
