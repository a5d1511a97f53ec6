"""Each request's id: taken from a sane X-Request-ID or made up, answered in the header, and
on every log record of that request (its access line, its errors), with its organization."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.observability.logs import configure_logging
from tests.conftest import RecordingEnqueuer
from tests.factories import Tenant


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The process's records as JSON lines in a buffer (the root logger restored after)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    yield stream
    root.handlers = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in records(stream) if r["logger"] == "loraforge.access"]


def test_a_request_without_an_id_gets_one_in_its_answer_and_its_access_line(
    client: TestClient, tenant_a: Tenant, log_stream: io.StringIO
):
    first = client.get("/v1/files", headers=tenant_a.headers)
    second = client.get("/v1/files", headers=tenant_a.headers)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    lines = access_lines(log_stream)
    assert [line["request_id"] for line in lines] == ids
    assert all(line["organization"] == tenant_a.organization_id for line in lines)
    assert lines[0]["method"] == "GET" and lines[0]["path"] == "/v1/files"
    assert lines[0]["status"] == 200 and lines[0]["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-42_a.b:c", True),
        ("0123456789abcdef0123456789abcdef", True),
        ("x" * 129, False),
        ("two words", False),
        ('"}{"injected": 1', False),
        ("", False),
    ],
)
def test_a_sane_incoming_request_id_is_kept_and_any_other_replaced(
    client: TestClient, log_stream: io.StringIO, sent: str, kept: bool
):
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    answered = response.headers["x-request-id"]
    assert (answered == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", answered)
    (line,) = access_lines(log_stream)
    assert line["request_id"] == answered
    assert "organization" not in line  # /healthz takes no key


def test_refused_requests_carry_their_id_and_the_job_they_named(
    client: TestClient, tenant_a: Tenant, log_stream: io.StringIO
):
    unauthenticated = client.get("/v1/files", headers={"X-Request-ID": "no-key"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-request-id"] == "no-key"
    missing = client.get(
        "/v1/fine_tuning/jobs/ftjob-missing", headers={**tenant_a.headers, "X-Request-ID": "gone"}
    )
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "gone"
    refused, not_found = access_lines(log_stream)
    assert (refused["request_id"], refused["status"]) == ("no-key", 401)
    assert "organization" not in refused
    assert (not_found["request_id"], not_found["status"]) == ("gone", 404)
    assert not_found["job_id"] == "ftjob-missing"
    assert not_found["organization"] == tenant_a.organization_id


def test_an_unexpected_error_is_logged_and_answered_with_the_request_id(
    tmp_path: Path, log_stream: io.StringIO
):
    settings = Settings(
        data_dir=tmp_path,
        broker_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings, enqueuer=RecordingEnqueuer())

    def broken() -> None:
        raise RuntimeError("a bug of ours")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "bug-1"
    logged = [r for r in records(log_stream) if r.get("request_id") == "bug-1"]
    (error,) = [r for r in logged if r["message"] == "unhandled error"]
    assert "RuntimeError: a bug of ours" in error["exception"]
    assert [r["status"] for r in logged if r["logger"] == "loraforge.access"] == [500]
