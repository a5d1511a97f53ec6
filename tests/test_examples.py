"""examples/ read LORAFORGE_BASE_URL as the `loraforge` command does: the server's root or its
/v1 URL, either form."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from app.client.http import LoraforgeClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FORMS = [
    "http://10.0.0.7:8000",
    "http://10.0.0.7:8000/",
    "http://10.0.0.7:8000/v1",
    "http://10.0.0.7:8000/v1/",
]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("base_url", FORMS)
def test_the_cli_and_the_quickstart_reach_the_same_api_from_either_form(base_url: str):
    quickstart = load_example("openai_quickstart")
    assert quickstart.api_url(base_url) == "http://10.0.0.7:8000/v1"
    client = LoraforgeClient.connect(base_url, "lf-x")
    try:
        assert str(client.http.base_url).rstrip("/") == "http://10.0.0.7:8000"
    finally:
        client.close()
