"""Throwaway databases: a SQLite file under tmp, or a fresh Postgres database dropped after."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "LORAFORGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# The suite uses Redis databases LORAFORGE_TEST_REDIS_DB and the few after it (REDIS_DBS):
# two checkouts running their suites on one machine set different values.
REDIS_SERVER = os.environ.get("LORAFORGE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB_BASE = int(os.environ.get("LORAFORGE_TEST_REDIS_DB", "11"))
REDIS_DBS = 2


def redis_url(offset: int) -> str:
    """The URL of the suite's Redis database number `offset` (0 .. REDIS_DBS - 1)."""
    assert 0 <= offset < REDIS_DBS
    return f"{REDIS_SERVER}/{REDIS_DB_BASE + offset}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create `loraforge_test_<random>` and yield its URL; drop it (and its sessions) after."""
    name = f"loraforge_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database of `kind` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'loraforge.db'}"
    else:
        with postgres_database() as url:
            yield url
