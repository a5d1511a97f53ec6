"""The dashboard's assets as served (paths, types, headers), and the new-job form's defaults
checked against the job schema, so the page and the API cannot drift apart."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.schemas.spec import (
    DpoHyperparameters,
    Hyperparameters,
    LoraSpec,
    QuantizationSpec,
    TrainingSpec,
)
from app.schemas.webhooks import EVENT_TYPES
from app.web import WEB_DIR
from tests.conftest import RecordingEnqueuer


@pytest.fixture
def web(tmp_path: Path) -> TestClient:
    settings = Settings(
        data_dir=tmp_path,
        broker_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )
    return TestClient(create_app(settings, enqueuer=RecordingEnqueuer()))


def test_root_redirects_to_the_dashboard(web: TestClient):
    response = web.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


def test_dashboard_page_and_assets_have_their_types_and_a_strict_policy(web: TestClient):
    page = web.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in (
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        asset = web.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(media_type)


def test_a_range_past_an_asset_answers_416_in_the_json_envelope(web: TestClient):
    size = len(web.get("/ui/app.js").content)
    response = web.get("/ui/app.js", headers={"Range": f"bytes={size}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


def test_every_module_the_page_imports_is_served(web: TestClient):
    scripts = sorted(path.name for path in WEB_DIR.glob("*.js"))
    assert {"app.js", "api.js", "sse.js", "chart.js"} <= set(scripts)
    for name in scripts:
        assert web.get(f"/ui/{name}").status_code == 200, name


@pytest.mark.parametrize(
    "path", ["/ui/__init__.py", "/ui/..%2Fmain.py", "/ui/missing.js", "/ui/.hidden.css"]
)
def test_anything_but_a_dashboard_asset_is_404(web: TestClient, path: str):
    response = web.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_dashboard_routes_stay_out_of_the_api_schema(web: TestClient):
    paths = web.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]
    assert "/v1/fine_tuning/estimates" in paths


class FormControls(HTMLParser):
    """name -> the default a form control shows, inside the new-job template."""

    def __init__(self) -> None:
        super().__init__()
        self.in_form = False
        self.controls: dict[str, dict[str, Any]] = {}
        self.select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "template":
            self.in_form = found.get("id") == "view-new-job"
        if not self.in_form:
            return
        name = found.get("name")
        if tag == "input" and name:
            self.controls[name] = found
        elif tag == "select" and name:
            self.select = name
            self.controls[name] = {**found, "options": []}
        elif tag == "option" and self.select:
            self.controls[self.select]["options"].append(found)

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.select = None
        if tag == "template":
            self.in_form = False


def shown_default(control: dict[str, Any]) -> Any:
    """What the page sends for an untouched control (as app/web/new-job.js reads it)."""
    kind = control.get("data-kind", "string")
    if "options" in control:
        options = control["options"]
        chosen = next((o for o in options if "selected" in o), options[0] if options else {})
        value = chosen.get("value")
        if kind == "bits":
            return None if value == "none" else int(value or 0)
        return value
    raw = control.get("value") or ""
    if kind == "bool":
        return "checked" in control
    if kind.startswith("auto-"):
        return "auto" if raw == "" else float(raw)
    if kind == "optional-int":
        return None if raw == "" else int(raw)
    return float(raw) if kind in ("int", "float") else raw


def test_new_job_form_has_every_knob_with_the_schema_default():
    parser = FormControls()
    parser.feed((WEB_DIR / "index.html").read_text())
    sections = {
        "method.supervised.hyperparameters": Hyperparameters(),
        "lora": LoraSpec(),
        "quantization": QuantizationSpec(),
        "training": TrainingSpec(),
    }
    for prefix, defaults in sections.items():
        for field, default in defaults.model_dump().items():
            name = f"{prefix}.{field}"
            assert name in parser.controls, f"the form has no control for {name}"
            assert shown_default(parser.controls[name]) == default, name
    for name in ("model", "training_file", "validation_file", "suffix", "seed", "method.type"):
        assert name in parser.controls, name
    beta = parser.controls["method.dpo.hyperparameters.beta"]
    assert shown_default(beta) == DpoHyperparameters().beta


class EventChoices(HTMLParser):
    """The values of the event checkboxes in the webhooks template, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.in_template = False
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "template":
            self.in_template = found.get("id") == "view-webhooks"
        elif self.in_template and tag == "input" and found.get("name") == "events":
            assert found.get("type") == "checkbox", found
            self.values.append(found.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self.in_template = False


def test_webhook_form_offers_exactly_the_events_the_api_accepts():
    parser = EventChoices()
    parser.feed((WEB_DIR / "index.html").read_text())
    assert parser.values == list(EVENT_TYPES)
