"""The Webhooks page in a real headless Chromium against `loraforge serve`, with receivers on
127.0.0.1 (allowed by LORAFORGE_WEBHOOK_ALLOW_HOSTS): add an endpoint and copy its secret
(shown once), "Send test" and its delivery in the table (each attempt, a retried one too),
delete, a refused URL; the page fits a laptop and a 400 px screen, and axe-core finds no
serious or critical violation on it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.e2e.stacks import Stack, embedded_stack
from tests.live import closed_port, wait_for
from tests.receivers import receiver
from tests.web.pages import expect, sign_in
from tests.web.test_dashboard_pages import AXE_RUN, LAPTOP, NARROW, SEVERE, assert_fits

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Deliveries polled for often and a failed one retried after a second: the table fills fast.
WEBHOOK_SETTINGS = {
    "LORAFORGE_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "LORAFORGE_WEBHOOK_POLL_INTERVAL_S": "0.3",
    "LORAFORGE_WEBHOOK_RETRY_BASE_S": "1",
    "LORAFORGE_WEBHOOK_TIMEOUT_S": "3",
}
DELIVERY_TIMEOUT_MS = 30_000
# What the page shows for a value it does not have (format.js).
NONE_SHOWN = "\u2013"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("webhooks"), WEBHOOK_SETTINGS) as running:
        yield running


@pytest.fixture(autouse=True)
def no_webhooks_left(stack: Stack) -> Iterator[None]:
    """Each test starts from an organization without webhooks."""
    yield
    client = stack.client()
    for webhook in client.get("/webhooks", params={"limit": 100}).json()["data"]:
        client.delete(f"/webhooks/{webhook['id']}")


def open_webhooks(page: Any, stack: Stack) -> None:
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()


def add_webhook(page: Any, url: str, events: list[str], description: str = "") -> str:
    """Fill in and submit the form; the secret the page shows."""
    page.get_by_label("URL").fill(url)
    for event in events:
        page.get_by_label(event).check()
    page.get_by_label("Description (optional)").fill(description)
    page.get_by_role("button", name="Add webhook").click()
    secret = page.get_by_label("Signing secret (shown once: copy it now)")
    expect(secret).to_be_visible()
    value: str = secret.input_value()
    return value


def card(page: Any, url: str) -> Any:
    return page.locator("article.webhook").filter(has=page.get_by_role("heading", name=url))


def test_adding_a_webhook_shows_its_secret_once_with_a_copy_button(page: Any, stack: Stack):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_webhooks(page, stack)
    expect(page.locator("#webhooks-empty")).to_have_text("No webhooks yet.")
    url = "http://127.0.0.1:9/hooks/dashboard"
    secret = add_webhook(
        page, url, ["fine_tuning.job.succeeded", "fine_tuning.export.failed"], "CI notifications"
    )
    assert secret.startswith("whsec_"), secret
    expect(page.locator("#webhooks-empty")).to_be_hidden()
    listed = card(page, url)
    expect(listed).to_contain_text("fine_tuning.job.succeeded, fine_tuning.export.failed")
    expect(listed).to_contain_text("CI notifications")
    expect(listed).to_contain_text("No deliveries yet.")
    (created,) = stack.client().get("/webhooks").json()["data"]
    assert created["url"] == url and created["secret"] is None
    expect(listed.locator("code.id")).to_have_text(created["id"])
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#status")).to_have_text("Copied the signing secret.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    # Shown once: the page opened again lists the endpoint without it.
    page.reload()
    expect(card(page, url)).to_be_visible()
    expect(page.locator("#webhook-secret")).to_be_hidden()
    assert secret not in page.content()


def test_send_test_delivers_a_signed_event_and_the_table_shows_each_attempt(
    page: Any, stack: Stack
):
    # The receiver answers 500 first: the worker tries again a second later and gets 200.
    with receiver([500]) as hook:
        open_webhooks(page, stack)
        secret = add_webhook(page, hook.url, [])
        listed = card(page, hook.url)
        expect(listed).to_contain_text("every event")
        listed.get_by_role("button", name=f"Send test event to {hook.url}").click()
        expect(page.locator("#status")).to_contain_text(f"Sent a test event to {hook.url}")
        first, second = hook.wait_for(2, timeout=DELIVERY_TIMEOUT_MS / 1000)
        rows = listed.locator("table.deliveries tbody tr")
        expect(rows).to_have_count(2, timeout=DELIVERY_TIMEOUT_MS)
    for request in (first, second):
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "webhook.test"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    cells = [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()] for i in (0, 1)]
    # Newest first: the second attempt answered 200, the first 500.
    (time_2, event_2, status_2, latency_2, error_2, attempt_2) = cells[0]
    (_, event_1, status_1, _, _, attempt_1) = cells[1]
    assert (event_2, status_2, attempt_2, error_2) == ("webhook.test", "200", "2", NONE_SHOWN)
    assert (event_1, status_1, attempt_1) == ("webhook.test", "500", "1")
    assert latency_2.endswith(" ms") and int(latency_2.split()[0]) >= 0
    assert time_2 not in ("", NONE_SHOWN)
    expect(rows.nth(1).locator("td").nth(2).locator(".failed")).to_have_text("500")
    expect(rows.nth(0).locator("td").nth(2).locator(".failed")).to_have_count(0)


def test_an_unreachable_receiver_shows_its_error_in_the_table(page: Any, stack: Stack):
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}/hooks"
        open_webhooks(page, stack)
        add_webhook(page, url, ["fine_tuning.job.failed"])
        listed = card(page, url)
        listed.get_by_role("button", name=f"Send test event to {url}").click()
        first = listed.locator("table.deliveries tbody tr").last
        expect(first).to_have_attribute("data-attempt", "1", timeout=DELIVERY_TIMEOUT_MS)
    cells = [cell.strip() for cell in first.locator("td").all_inner_texts()]
    assert cells[2] == NONE_SHOWN and cells[5] == "1", cells
    assert cells[4] not in ("", NONE_SHOWN), cells  # why it failed, as the worker recorded it


def test_delete_removes_the_webhook(page: Any, stack: Stack):
    url = "http://127.0.0.1:9/hooks/to-delete"
    open_webhooks(page, stack)
    add_webhook(page, url, [])
    (created,) = stack.client().get("/webhooks").json()["data"]
    page.once("dialog", lambda dialog: dialog.accept())
    card(page, url).get_by_role("button", name=f"Delete the webhook {url}").click()
    expect(card(page, url)).to_have_count(0)
    expect(page.locator("#webhooks-empty")).to_be_visible()
    expect(page.locator("#status")).to_have_text(f"Deleted the webhook {url}.")
    assert stack.client().get(f"/webhooks/{created['id']}").status_code == 404


def test_a_url_the_server_refuses_says_why_at_the_url_field(page: Any, stack: Stack):
    open_webhooks(page, stack)
    page.get_by_label("URL").fill("http://10.1.2.3/hooks")  # private, and not allowed
    page.get_by_role("button", name="Add webhook").click()
    error = page.locator("#webhook-form-error")
    expect(error).to_contain_text("The webhook was refused:")
    expect(page.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#webhook-secret")).to_be_hidden()
    assert stack.client().get("/webhooks").json()["data"] == []
    page.get_by_label("URL").fill("")
    page.get_by_role("button", name="Add webhook").click()
    expect(error).to_have_text("Enter the URL to send events to.")


@pytest.fixture
def listed_webhooks(stack: Stack) -> Iterator[None]:
    """Two endpoints with deliveries to show: one answered, one whose receiver is gone (a
    long error in its table) and a long URL."""
    client = stack.client()
    with receiver() as hook, closed_port() as port:
        answered = client.post("/webhooks", json={"url": hook.url, "description": "ok"}).json()
        long_url = f"http://127.0.0.1:{port}/hooks/" + "a-rather-long-path-segment/" * 4
        gone = client.post(
            "/webhooks", json={"url": long_url, "events": ["fine_tuning.job.failed"]}
        )
        for webhook in (answered, gone.json()):
            assert client.post(f"/webhooks/{webhook['id']}/test").status_code == 200
        hook.wait_for(1, timeout=DELIVERY_TIMEOUT_MS / 1000)

        def attempted(webhook_id: str) -> bool:
            page = client.get(f"/webhooks/{webhook_id}/deliveries").json()["data"]
            return bool(page and page[0]["attempts"])

        for webhook in (answered, gone.json()):
            wait_for(partial(attempted, webhook["id"]), 30, f"a delivery to {webhook['url']}")
        yield


@pytest.mark.parametrize("viewport", [LAPTOP, NARROW], ids=["laptop", "400px"])
def test_the_webhooks_page_fits_the_screen_and_axe_finds_nothing_severe(
    open_page: Callable[..., Any],
    stack: Stack,
    listed_webhooks: None,
    artifacts: Path,
    viewport: dict[str, int],
):
    page = open_page(viewport, axe=True)
    open_webhooks(page, stack)
    expect(page.locator("table.deliveries tbody tr[data-attempt='1']")).to_have_count(2)
    page.wait_for_load_state("networkidle")
    width = viewport["width"]
    assert_fits(page, "webhooks", width)
    page.screenshot(path=artifacts / f"page-webhooks-{width}px.png", full_page=True)
    violations = page.evaluate(AXE_RUN)
    (artifacts / f"axe-webhooks-{width}px.json").write_text(json.dumps(violations, indent=2))
    severe = [v for v in violations if v["impact"] in SEVERE]
    assert not severe, json.dumps(severe, indent=2)
