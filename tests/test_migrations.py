"""Migrations: `alembic upgrade head` on an empty database of each kind, then no drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import create_engine, inspect

from app.config import Settings
from app.db.base import Base, UTCDateTime, utcnow
from app.db.migrate import MIGRATIONS_DIR
from app.db.models import Export, Job
from app.db.session import make_session_factory
from worker.reaper import requeue_expired_exports

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


def _table(name: str, *columns: str, **typed: Any) -> sa.TableClause:
    """A lightweight table of the schema at an older revision, to write rows into."""
    return sa.table(
        name,
        *map(sa.column, columns),
        *(sa.column(c, t) for c, t in typed.items()),
        sa.column("created_at", UTCDateTime()),
    )


def _rows_before_leased_exports(engine: sa.Engine) -> None:
    """A succeeded job with an export stuck running (its worker gone) and one queued."""
    now = utcnow()
    organization = _table("organization", "id", "name")
    job = _table(
        "job",
        *("id", "organization_id", "model", "training_file_id", "seed", "status", "attempt"),
        *("cancel_requested", "pause_requested"),
        spec=sa.JSON(),
        result_files=sa.JSON(),
    )
    export = _table("export", "id", "job_id", "organization_id", "type", "dtype", "status")
    with engine.begin() as connection:
        connection.execute(organization.insert().values(id="org-1", name="acme", created_at=now))
        connection.execute(
            job.insert().values(
                id="ftjob-1",
                organization_id="org-1",
                model="m",
                training_file_id="file-1",
                seed=1,
                status="succeeded",
                attempt=1,
                cancel_requested=False,
                pause_requested=False,
                spec={},
                result_files=[],
                created_at=now,
            )
        )
        for export_id, status in (("ftexp-stuck", "running"), ("ftexp-waiting", "queued")):
            connection.execute(
                export.insert().values(
                    id=export_id,
                    job_id="ftjob-1",
                    organization_id="org-1",
                    type="merged",
                    dtype="bfloat16",
                    status=status,
                    created_at=now,
                )
            )


def test_upgrade_hands_exports_left_running_without_a_lease_to_the_reaper(database_url: str):
    assert alembic(database_url, "upgrade", "0002").returncode == 0
    engine = create_engine(database_url)
    try:
        _rows_before_leased_exports(engine)
        upgraded = alembic(database_url, "upgrade", "head")
        assert upgraded.returncode == 0, upgraded.stderr
        factory = make_session_factory(engine)
        settings = Settings(database_url=database_url, _env_file=None)  # type: ignore[call-arg]
        with factory() as session:
            assert session.get_one(Job, "ftjob-1").lost_workers == 0
            assert session.get_one(Export, "ftexp-waiting").lease_expires_at is None
            assert requeue_expired_exports(session, settings) == ["ftexp-stuck"]
        with factory() as session:
            stuck = session.get_one(Export, "ftexp-stuck")
            assert (stuck.status, stuck.attempt, stuck.lost_workers) == ("queued", 0, 1)
    finally:
        engine.dispose()
