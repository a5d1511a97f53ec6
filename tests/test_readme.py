"""The README stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import settings_reference
from tests.conftest import upload
from tests.factories import Tenant

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = README.parent / "examples" / "animal-sounds.jsonl"


def test_settings_table_is_generated_from_settings():
    text = README.read_text()
    table = text.split("<!-- settings:begin", 1)[1].split("-->", 1)[1].split("<!-- settings:end")[0]
    assert table.strip() == settings_reference().strip()


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block


def test_the_upload_example_shows_what_the_api_answers_for_the_example_file(
    client: TestClient, tenant_a: Tenant
):
    (line,) = [
        line for line in README.read_text().splitlines() if line.startswith('# {"id": "file-')
    ]
    shown = {
        "bytes": int(re.findall(r'"bytes": (\d+)', line)[0]),
        "examples": int(re.findall(r'"examples": (\d+)', line)[0]),
        "format": re.findall(r'"format": "(\w+)"', line)[0],
    }
    answer = upload(client, tenant_a, EXAMPLE.read_bytes(), EXAMPLE.name).json()
    assert shown == {
        "bytes": answer["bytes"],
        "examples": answer["stats"]["examples"],
        "format": answer["stats"]["format"],
    }
    assert answer["bytes"] == EXAMPLE.stat().st_size
