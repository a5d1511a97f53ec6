"""Every dashboard page in a real headless Chromium against `loraforge serve`, on jobs the
real worker trained and a merged export it built: what the pages show (export details,
legend, empty states, the status line, sign-out), that each fits a 400 px wide screen (the
Playground with two answers in compare mode), and that axe-core finds no serious or
critical accessibility violation on any of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stacks import Stack
from tests.web.pages import ask, expect, last_answer, open_playground, sign_in
from tests.web.trained import CHECKPOINT_EVERY, EVAL_EVERY, LEARNED_STEPS, STEPS, Trained

pytestmark = [pytest.mark.slow, pytest.mark.browser]

NARROW = {"width": 400, "height": 800}
LAPTOP = {"width": 1366, "height": 900}
# Rendered text smaller than this (CSS px) is hard to read on a phone.
MIN_LABEL_PX = 11


@pytest.fixture(scope="module")
def stack(trained_stack: tuple[Stack, Trained]) -> Stack:
    return trained_stack[0]


@pytest.fixture(scope="module")
def trained(trained_stack: tuple[Stack, Trained]) -> Trained:
    return trained_stack[1]


def views(trained: Trained) -> dict[str, str]:
    """Every page of the dashboard after sign-in, by name: its URL fragment."""
    return {
        "jobs": "#/jobs",
        "new-job": "#/new",
        "files": "#/files",
        "job": f"#/jobs/{trained.validated}",
        "job-without-exports": f"#/jobs/{trained.plain}",
        "playground": "#/playground",
        "webhooks": "#/webhooks",
    }


def show(page: Any, fragment: str, trained: Trained) -> None:
    """Open a view and wait until the data it loads is on it (the Playground: answers of a
    fine-tuned model and its base side by side)."""
    if fragment == "#/playground":
        open_playground(page)
        page.get_by_label("Compare two models side by side").check()
        ask(page, "Say hello number 2")
        for pane in (0, 1):
            expect(last_answer(page, pane)).to_have_attribute("data-state", "done")
        return
    page.goto(f"/ui/{fragment}")
    if fragment == "#/jobs":
        expect(page.locator("#jobs-table tbody tr")).to_have_count(2)
        expect(page.locator("#jobs-table tbody")).to_contain_text(f"{STEPS}/{STEPS}")
    elif fragment == "#/new":
        expect(page.locator("#estimate-total")).to_be_visible()
    elif fragment == "#/files":
        expect(page.locator("#files-table tbody")).to_contain_text("hello-valid.jsonl")
    elif fragment == "#/webhooks":  # none on this stack (tests/web/test_dashboard_webhooks.py)
        expect(page.locator("#webhooks-empty")).to_be_visible()
    else:
        steps = STEPS if trained.validated in fragment else LEARNED_STEPS
        expect(page.locator("#job-steps")).to_have_text(f"step {steps} of {steps}")
        expect(page.locator("#events-log")).to_contain_text("successfully completed")
        if trained.validated in fragment:
            expect(page.locator("#exports-table tbody tr")).to_have_count(1)
        else:
            expect(page.locator("#exports-empty")).to_be_visible()
    page.wait_for_load_state("networkidle")


@pytest.fixture
def signed_in(open_page: Callable[..., Any], stack: Stack) -> Callable[[dict[str, int]], Any]:
    def open_signed_in(viewport: dict[str, int]) -> Any:
        opened = open_page(viewport)
        sign_in(opened, stack.key)
        return opened

    return open_signed_in


def js_exponential(value: float) -> str:
    """What JavaScript's value.toExponential(2) writes: 1.23e-6, 0.00e+0."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent):+d}"


def js_bytes(size: int) -> str:
    """What the page's formatBytes writes: 1023 B, 1.50 KiB, 12.3 MiB."""
    value, unit = float(size), 0
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{size} B"
    return f"{value:.2f} {units[unit]}" if value < 10 else f"{value:.1f} {units[unit]}"


def test_merged_export_details_show_the_logit_difference_the_worker_measured(
    page: Any, stack: Stack, trained: Trained
):
    # Written by the worker's export (worker/exports.py) after merging on the tiny model.
    difference = trained.export["details"]["max_abs_logit_diff"]
    assert isinstance(difference, float), trained.export
    sign_in(page, stack.key)
    show(page, f"#/jobs/{trained.validated}", trained)
    row = page.locator(f'#exports-table tr[data-export-id="{trained.export["id"]}"]')
    details = row.locator("td").nth(3)
    expect(details).to_contain_text(f"max logit difference {js_exponential(difference)}")
    expect(details).to_contain_text(js_bytes(trained.export["details"]["bytes"]))


def test_a_job_without_exports_says_so_and_one_with_an_export_does_not(
    page: Any, stack: Stack, trained: Trained
):
    sign_in(page, stack.key)
    show(page, f"#/jobs/{trained.plain}", trained)
    expect(page.locator("#exports-empty")).to_have_text("No merged exports yet.")
    expect(page.locator("#exports-table")).to_be_hidden()
    show(page, f"#/jobs/{trained.validated}", trained)
    expect(page.locator("#exports-empty")).to_be_hidden()
    expect(page.locator("#exports-table")).to_be_visible()


def test_the_validation_loss_legend_shows_only_for_jobs_with_a_validation_file(
    page: Any, stack: Stack, trained: Trained
):
    sign_in(page, stack.key)
    show(page, f"#/jobs/{trained.validated}", trained)
    legend = page.locator("figure.chart figcaption")
    expect(legend.get_by_text("validation loss")).to_be_visible()
    # A validation pass on evaluation steps and on checkpoint steps (full_valid_*).
    validated = {s for s in range(1, STEPS + 1) if s % EVAL_EVERY == 0 or s % CHECKPOINT_EVERY == 0}
    expect(page.locator("#loss-chart circle.eval-point")).to_have_count(len(validated))
    show(page, f"#/jobs/{trained.plain}", trained)
    expect(legend.get_by_text("training loss")).to_be_visible()
    expect(legend.get_by_text("validation loss")).to_be_hidden()


def test_sign_out_is_hidden_until_signed_in_and_hidden_again_after(page: Any, stack: Stack):
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    sign_out = page.locator("#sign-out")
    expect(sign_out).to_be_hidden()
    expect(page.locator("#nav")).to_be_hidden()
    sign_in(page, stack.key)
    expect(sign_out).to_be_visible()
    sign_out.click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(sign_out).to_be_hidden()


def status_after_settling(page: Any) -> str:
    """The status line once the view's pending announcements (one animation frame) have run."""
    page.wait_for_timeout(300)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")
    text: str = page.locator("#status").inner_text()
    return text.strip()


def test_the_status_line_belongs_to_the_page_it_was_announced_on(
    page: Any, stack: Stack, trained: Trained
):
    sign_in(page, stack.key)
    assert status_after_settling(page) == "Signed in."
    page.get_by_role("navigation").get_by_role("link", name="Files").click()
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()
    assert status_after_settling(page) == ""
    show(page, f"#/jobs/{trained.validated}", trained)
    with page.expect_download():
        page.get_by_role("button", name="Download adapter").click()
    expect(page.locator("#status")).to_contain_text("Downloaded")
    page.get_by_role("navigation").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    assert status_after_settling(page) == ""


ONE_LINE_IDS = {
    "#/jobs": "#jobs-table tbody td:first-child a",
    "#/files": "#files-table tbody code",
    "job": "#job-id, #job-training-file, #exports-table tbody code",
}


@pytest.mark.parametrize("viewport", [LAPTOP, NARROW], ids=["laptop", "narrow"])
def test_ids_stay_on_one_line(
    signed_in: Callable[[dict[str, int]], Any], trained: Trained, viewport: dict[str, int]
):
    page = signed_in(viewport)
    for fragment, selector in ONE_LINE_IDS.items():
        fragment = f"#/jobs/{trained.validated}" if fragment == "job" else fragment
        show(page, fragment, trained)
        lines = page.evaluate(
            "(selector) => [...document.querySelectorAll(selector)]"
            ".map((node) => [node.textContent, node.getClientRects().length])",
            selector,
        )
        assert lines, (fragment, selector)
        assert all(count == 1 for _, count in lines), (fragment, lines)


# Boxes that stick out of the viewport (outside a box that scrolls sideways, which is itself
# checked), and scrolling boxes that hide part of their content sideways.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (node) => ['auto', 'scroll'].includes(getComputedStyle(node).overflowX);
  const name = (node) => `${node.tagName.toLowerCase()}#${node.id}`
    + `.${node.className?.baseVal ?? node.className}`;
  const outside = [];
  const sideways = [];
  const shown = 'main, main *, #status, .site-header, .site-header *';
  for (const node of document.querySelectorAll(shown)) {
    const box = node.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || node.closest('.visually-hidden')) continue;
    if (scrolls(node) && node.scrollWidth > node.clientWidth + 1) sideways.push(name(node));
    let parent = node.parentElement;
    while (parent && !scrolls(parent)) parent = parent.parentElement;
    if (parent) continue;
    if (box.left < -0.5 || box.right > width + 0.5) {
      outside.push(`${name(node)} ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return { scrollWidth: document.documentElement.scrollWidth, width, outside, sideways };
}"""

CHART_LABELS = """() => {
  const svg = document.querySelector('#loss-chart');
  const frame = svg.getBoundingClientRect();
  return {
    frame: [frame.left, frame.right],
    labels: [...svg.querySelectorAll('text')].map((text) => {
      const box = text.getBoundingClientRect();
      const px = parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a;
      return { text: text.textContent, px, box: [box.left, box.top, box.right, box.bottom] };
    }),
  };
}"""


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def assert_fits(page: Any, name: str, width: int) -> None:
    layout = page.evaluate(OVERFLOW)
    assert layout["scrollWidth"] <= width, (name, layout)
    assert layout["outside"] == [], (name, layout)
    assert layout["sideways"] == [], (name, layout)


def assert_legible_chart(page: Any) -> None:
    chart = page.evaluate(CHART_LABELS)
    labels = chart["labels"]
    assert len(labels) >= 4, chart
    left, right = chart["frame"]
    for label in labels:
        assert label["px"] >= MIN_LABEL_PX, label
        assert left - 0.5 <= label["box"][0] and label["box"][2] <= right + 0.5, label
    for i, first in enumerate(labels):
        for second in labels[i + 1 :]:
            assert not overlaps(first["box"], second["box"]), (first, second)


@pytest.mark.parametrize("viewport", [LAPTOP, NARROW], ids=["laptop", "400px"])
@pytest.mark.parametrize(
    "name",
    [
        "sign-in",
        "jobs",
        "new-job",
        "files",
        "job",
        "job-without-exports",
        "playground",
        "webhooks",
    ],
)
def test_every_page_fits_the_screen_with_nothing_hidden_sideways(
    open_page: Callable[..., Any],
    stack: Stack,
    trained: Trained,
    name: str,
    viewport: dict[str, int],
):
    page = open_page(viewport)
    if name == "sign-in":
        page.goto("/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    else:
        sign_in(page, stack.key)
        show(page, views(trained)[name], trained)
    assert_fits(page, name, viewport["width"])
    if name in ("job", "job-without-exports"):  # the pages with a loss chart
        assert_legible_chart(page)


AXE_RUN = """async () => {
  const results = await axe.run(document, { resultTypes: ['violations'] });
  return results.violations.map((violation) => ({
    id: violation.id,
    impact: violation.impact,
    help: violation.help,
    nodes: violation.nodes.slice(0, 5).map((node) => node.target.join(' ')),
  }));
}"""
SEVERE = {"serious", "critical"}


@pytest.mark.parametrize("viewport", [LAPTOP, NARROW], ids=["laptop", "narrow"])
def test_axe_finds_no_serious_or_critical_violation_on_any_page(
    open_page: Callable[..., Any],
    stack: Stack,
    trained: Trained,
    artifacts: Path,
    viewport: dict[str, int],
):
    page = open_page(viewport, axe=True)
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    width = viewport["width"]
    page.screenshot(path=artifacts / f"page-sign-in-{width}px.png", full_page=True)
    found = {"sign-in": page.evaluate(AXE_RUN)}
    sign_in(page, stack.key)
    for name, fragment in views(trained).items():
        show(page, fragment, trained)
        page.screenshot(path=artifacts / f"page-{name}-{width}px.png", full_page=True)
        found[name] = page.evaluate(AXE_RUN)
    report = artifacts / f"axe-{width}px.json"
    report.write_text(json.dumps(found, indent=2))
    severe = {
        name: [v for v in violations if v["impact"] in SEVERE] for name, violations in found.items()
    }
    assert not any(severe.values()), json.dumps(severe, indent=2)
