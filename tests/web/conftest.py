"""A real headless Chromium for the dashboard tests: Debian's package at /usr/bin/chromium,
driven by Playwright. Nothing here downloads a browser; without one the tests fail, loudly."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stacks import Stack, embedded_stack
from tests.web.trained import GENERATION_SETTINGS, Trained, train_jobs

CHROMIUM = Path(os.environ.get("LORAFORGE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Headless and off the network: no sandbox as root, no GPU, no background or update traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen
UI_TIMEOUT_MS = 30_000
# axe-core, vendored (version and source in its folder's README): no network at test time.
AXE_CORE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
            "or set LORAFORGE_TEST_CHROMIUM; the browser tests never download a browser",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("web")) as running:
        yield running


@pytest.fixture(scope="package")
def trained_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Trained]]:
    """One `loraforge serve` with jobs the real worker trained, for the modules that only read
    them (they make it their `stack`): trained once, not once per module."""
    with embedded_stack(tmp_path_factory.mktemp("trained"), GENERATION_SETTINGS) as running:
        yield running, train_jobs(running)


@pytest.fixture
def open_page(browser: Any, stack: Stack) -> Iterator[Callable[..., Any]]:
    """Opens pages in fresh browser contexts (no key in their session storage), at a given
    viewport, with axe-core loaded when asked; JavaScript errors on any of them fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_one(viewport: dict[str, int] = VIEWPORT, *, axe: bool = False) -> Any:
        context = browser.new_context(
            viewport=viewport, accept_downloads=True, base_url=stack.base_url
        )
        contexts.append(context)
        context.set_default_timeout(UI_TIMEOUT_MS)
        if axe:
            # An init script runs before the page's own and outside its Content-Security-Policy,
            # so the page under test keeps its policy.
            context.add_init_script(path=str(AXE_CORE))
        opened = context.new_page()
        opened.on("pageerror", lambda error: errors.append(str(error)))
        return opened

    yield open_one
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(open_page: Callable[..., Any]) -> Any:
    return open_page()
