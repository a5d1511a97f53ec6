"""The README stays in step with the code."""

from __future__ import annotations

from pathlib import Path

from app.config import settings_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_table_is_generated_from_settings():
    text = README.read_text()
    table = text.split("<!-- settings:begin", 1)[1].split("-->", 1)[1].split("<!-- settings:end")[0]
    assert table.strip() == settings_reference().strip()


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block
