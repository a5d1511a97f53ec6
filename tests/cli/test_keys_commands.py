"""`loraforge keys` on the machine's database: reading commands never create one, and say
where they looked when there is none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from tests.databases import postgres_database
from tests.live import loraforge_in


def test_keys_list_elsewhere_says_no_data_was_found_and_creates_nothing(tmp_path: Path):
    for args in (("keys", "list"), ("keys", "revoke", "key-123")):
        result = loraforge_in(tmp_path, *args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert f"error: no loraforge data found in {tmp_path / 'data'}" in result.stderr
        assert "LORAFORGE_DATA_DIR" in result.stderr
        assert list(tmp_path.iterdir()) == []


def test_keys_create_makes_the_database_that_list_then_reads(tmp_path: Path):
    created = loraforge_in(tmp_path, "keys", "create", "--org", "acme")
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "data" / "loraforge.db").is_file()
    listed = loraforge_in(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    (key,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert key["organization"] == "acme" and created.stdout.strip().endswith(key["redacted"][-4:])


@pytest.mark.postgres
def test_keys_list_on_an_empty_postgres_database_creates_no_tables(tmp_path: Path):
    with postgres_database() as url:
        result = loraforge_in(tmp_path, "keys", "list", LORAFORGE_DATABASE_URL=url)
        assert result.returncode == 1
        assert "error: no loraforge data found in postgresql+psycopg://" in result.stderr
        engine = create_engine(url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
