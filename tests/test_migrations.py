"""Migrations: `alembic upgrade head` on an empty database of each kind, then no drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from app.db.base import Base
from app.db.migrate import MIGRATIONS_DIR

REPO = MIGRATIONS_DIR.parent


def alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The alembic command line, as an operator would run it, against `database_url`."""
    env = {**os.environ, "LORAFORGE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(MIGRATIONS_DIR / "alembic.ini"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upgrade_head_on_empty_database_then_check_finds_no_drift(database_url: str):
    upgraded = alembic(database_url, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    engine = create_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    checked = alembic(database_url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_downgrade_base_removes_every_table(database_url: str, tmp_path: Path):
    assert alembic(database_url, "upgrade", "head").returncode == 0
    downgraded = alembic(database_url, "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    engine = create_engine(database_url)
    try:
        left = set(inspect(engine).get_table_names()) & set(Base.metadata.tables)
    finally:
        engine.dispose()
    assert left == set()
