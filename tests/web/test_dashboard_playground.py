"""The Playground in a real headless Chromium against `loraforge serve`, on models the real
worker trained: a fine-tuned model streams what it learned, with its finish reason and
usage; compare mode streams a base and a fine-tuned model at once, side by side; "Try it"
opens a job's model or a checkpoint; Stop ends a stream and frees its generation slot."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.stacks import Stack
from tests.live import wait_for
from tests.web.pages import ask, expect, last_answer, open_playground, sign_in
from tests.web.trained import BASE, CHECKPOINT_EVERY, LONG_PROMPT, Trained

pytestmark = [pytest.mark.slow, pytest.mark.browser]

QUESTION = "Say hello number 2"
LEARNED = "Hello 2! Hello 2!"


@pytest.fixture(scope="module")
def stack(trained_stack: tuple[Stack, Trained]) -> Stack:
    return trained_stack[0]


@pytest.fixture(scope="module")
def trained(trained_stack: tuple[Stack, Trained]) -> Trained:
    return trained_stack[1]


@pytest.fixture
def playground(open_page: Callable[..., Any], stack: Stack) -> Any:
    page = open_page()
    sign_in(page, stack.key)
    return page


def api_answer(stack: Stack, model: str, message: str = QUESTION) -> dict[str, Any]:
    """The API's own answer (not streamed) at the settings `ask` uses: the reference."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": message}],
        "temperature": 0,
        "max_tokens": 24,
    }
    response = stack.client().post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def finished(stack: Stack, model: str) -> str:
    """What the page writes under an answer that ended as the API's own answer did."""
    reference = api_answer(stack, model)
    reason, usage = reference["choices"][0]["finish_reason"], reference["usage"]
    capped = " (max tokens reached)" if reason == "length" else ""
    return (
        f"Finished: {reason}{capped} · {usage['prompt_tokens']} prompt"
        f" + {usage['completion_tokens']} completion = {usage['total_tokens']} tokens"
    )


def text_of(answer: Any) -> str:
    text: str = answer.locator(".content").text_content()
    return text


def test_a_fine_tuned_model_streams_what_it_learned_with_finish_reason_and_usage(
    playground: Any, stack: Stack, trained: Trained
):
    page = playground
    open_playground(page)
    page.get_by_label("Model", exact=True).select_option(trained.learned_model)
    with page.expect_request("**/v1/chat/completions") as sent:
        ask(page, QUESTION)
    assert sent.value.post_data_json == {
        "model": trained.learned_model,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 24,
        "stream_options": {"include_usage": True},
        "stream": True,
    }
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done")
    assert text_of(answer) == LEARNED
    expect(answer.locator(".answer-meta")).to_have_text(finished(stack, trained.learned_model))
    tokens = api_answer(stack, trained.learned_model)["usage"]["completion_tokens"]
    expect(page.locator("#status")).to_have_text(f"Answer finished (stop, {tokens} tokens).")

    # The next turn sends the conversation so far.
    with page.expect_request("**/v1/chat/completions") as sent:
        ask(page, "Say hello number 1")
    assert sent.value.post_data_json["messages"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": LEARNED},
        {"role": "user", "content": "Say hello number 1"},
    ]
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    expect(page.locator(".pane").first.locator(".message.assistant")).to_have_count(2)


def test_compare_mode_streams_a_base_and_a_fine_tuned_model_at_once_side_by_side(
    playground: Any, stack: Stack, trained: Trained
):
    base_answer = api_answer(stack, BASE)["choices"][0]["message"]["content"]
    assert LEARNED not in base_answer
    page = playground
    open_playground(page)
    # The newest fine-tuned model is chosen first; compared, by default, with its base.
    expect(page.get_by_label("Model", exact=True)).to_have_value(trained.learned_model)
    page.get_by_label("Compare two models side by side").check()
    expect(page.get_by_label("Compare with")).to_have_value(BASE)
    requests: list[str] = []

    def sent(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions"):
            requests.append(f"sent {request.post_data_json['model']}")

    def done(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions"):
            requests.append("finished")

    page.on("request", sent)
    page.on("requestfinished", done)
    ask(page, QUESTION)

    left, right = page.locator(".pane").nth(0), page.locator(".pane").nth(1)
    expect(left.get_by_role("heading")).to_have_text(trained.learned_model)
    expect(right.get_by_role("heading")).to_have_text(BASE)
    for pane in (0, 1):
        expect(last_answer(page, pane)).to_have_attribute("data-state", "done")
    assert text_of(last_answer(page, 0)) == LEARNED
    assert text_of(last_answer(page, 1)) == base_answer
    expect(last_answer(page, 1).locator(".answer-meta")).to_have_text(finished(stack, BASE))
    expect(page.locator("#status")).to_have_text("Both answers finished.")
    # Both requests went out before either answer was complete: two streams at once.
    assert sorted(requests[:2]) == sorted([f"sent {trained.learned_model}", f"sent {BASE}"])
    assert requests[2:] == ["finished", "finished"], requests
    left_box, right_box = left.bounding_box(), right.bounding_box()
    assert right_box["x"] >= left_box["x"] + left_box["width"], (left_box, right_box)
    assert abs(right_box["y"] - left_box["y"]) < 1, (left_box, right_box)


def test_try_it_opens_the_playground_with_the_jobs_model(
    playground: Any, stack: Stack, trained: Trained
):
    page = playground
    page.goto(f"/ui/#/jobs/{trained.plain}")
    page.get_by_role("link", name="Try it", exact=True).click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.get_by_label("Model", exact=True)).to_have_value(trained.learned_model)
    expect(page.get_by_role("link", name="Playground")).to_have_attribute("aria-current", "page")


def test_try_it_while_the_job_page_still_loads_leaves_it_without_errors(
    playground: Any, trained: Trained
):
    from playwright.sync_api import Error as PlaywrightError

    page = playground
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    held: list[Any] = []
    page.route("**/checkpoints?*", lambda route: held.append(route))  # held back
    page.goto(f"/ui/#/jobs/{trained.plain}")
    page.get_by_role("link", name="Try it", exact=True).click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    wait_for(lambda: held, 10, "the checkpoints request")
    for route in held:
        with suppress(PlaywrightError):  # the page aborted it when it was left: as it should
            route.continue_()
    page.wait_for_timeout(500)
    assert errors == []


def test_try_it_on_a_checkpoint_chats_with_that_checkpoint(
    playground: Any, stack: Stack, trained: Trained
):
    checkpoint = trained.checkpoints[CHECKPOINT_EVERY]
    page = playground
    page.goto(f"/ui/#/jobs/{trained.validated}")
    name = f"Try it in the Playground: checkpoint step {CHECKPOINT_EVERY}"
    page.get_by_role("link", name=name).click()
    model = page.get_by_label("Model", exact=True)
    expect(model).to_have_value(checkpoint)
    expect(model.locator("optgroup[label='Checkpoints'] option")).to_have_text([checkpoint])
    ask(page, QUESTION)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done")
    assert text_of(answer) == api_answer(stack, checkpoint)["choices"][0]["message"]["content"]
    expect(answer.locator(".answer-meta")).to_have_text(finished(stack, checkpoint))


def test_a_model_the_server_does_not_know_answers_its_error_in_the_pane(
    playground: Any, stack: Stack
):
    missing = f"ft:{BASE}:default:gone:0000000"
    body = {"model": missing, "messages": [{"role": "user", "content": QUESTION}]}
    refused = stack.client().post("/chat/completions", json=body)
    assert refused.status_code == 404, refused.text
    page = playground
    open_playground(page, f"#/playground/{quote(missing, safe='')}")
    model = page.get_by_label("Model", exact=True)
    expect(model).to_have_value(missing)
    expect(model.locator("optgroup[label='From the link'] option")).to_have_text([missing])
    ask(page, QUESTION)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "failed")
    expect(answer.locator(".answer-meta")).to_have_text(refused.json()["error"]["message"])
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def streams_accepted_at_once(stack: Stack, count: int) -> list[int]:
    """Statuses of `count` streamed chats opened together (each holds one of the
    organization's generation slots while open), then closed."""
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": 2048,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.key}"}
    client = httpx.Client(base_url=stack.base_url, headers=headers, timeout=60)
    with client, ExitStack() as streams:
        opened = [
            streams.enter_context(client.stream("POST", "/v1/chat/completions", json=body))
            for _ in range(count)
        ]
        return [response.status_code for response in opened]


def test_stop_ends_a_stream_shown_as_it_arrives_and_frees_its_generation_slot(
    playground: Any, stack: Stack
):
    page = playground
    open_playground(page)
    page.get_by_label("Model", exact=True).select_option(BASE)
    ask(page, LONG_PROMPT, max_tokens=2048)
    answer = last_answer(page)

    def shown() -> int:
        return len(text_of(answer))

    wait_for(lambda: shown() > 0, 30, "the first chunk on the page", interval=0.05)
    first = shown()
    wait_for(lambda: shown() > first, 10, "more chunks on the page", interval=0.05)
    expect(answer).to_have_attribute("data-state", "streaming")
    # The page's generation holds one of the organization's two slots.
    assert streams_accepted_at_once(stack, 2) == [200, 429]

    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".answer-meta")).to_have_text("Stopped.")
    expect(page.locator("#status")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    stopped_at = shown()
    time.sleep(1)
    assert shown() == stopped_at
    # Its slot is free again long before the answer would have ended.
    wait_for(lambda: streams_accepted_at_once(stack, 2) == [200, 200], 3, "two free slots")
