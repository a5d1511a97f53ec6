"""The storage suite runs every test on both backends: the data dir, and a bucket on a real
S3-compatible server (moto's, one subprocess for the session, a fresh bucket per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.storage import Storage, build_storage
from tests.storage.s3server import create_bucket, moto_server, s3_settings

BACKENDS = ["local", "s3"]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    return create_bucket(s3_endpoint)


def backend_fields(request: pytest.FixtureRequest, backend: str) -> dict[str, object]:
    """Settings fields of `backend`; for s3, on a fresh bucket of the session's server."""
    if backend == "local":
        return {}
    return s3_settings(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Overrides the root fixture: SQLite, and each storage backend in turn."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'loraforge.db'}",
        broker_url="memory://",
        max_upload_bytes=64 * 1024,
        min_training_examples=10,
        _env_file=None,  # type: ignore[call-arg]
        **backend_fields(request, request.param),  # type: ignore[arg-type]
    )


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return build_storage(settings)
