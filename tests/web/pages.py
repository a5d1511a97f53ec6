"""Helpers for driving the dashboard in the browser tests."""

from __future__ import annotations

from typing import Any


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def sign_in(page: Any, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()


def open_playground(page: Any, fragment: str = "#/playground") -> None:
    """Open the Playground (signed in) and wait until its model list has loaded."""
    page.goto(f"/ui/{fragment}")
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def ask(page: Any, message: str, *, temperature: float = 0, max_tokens: int = 24) -> None:
    """Send `message` from the Playground with these sampling settings."""
    page.get_by_label("Temperature").fill(str(temperature))
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Send").click()


def last_answer(page: Any, pane: int = 0) -> Any:
    """The newest answer in a Playground pane (0: the left or only one)."""
    return page.locator(".pane").nth(pane).locator(".message.assistant").last
