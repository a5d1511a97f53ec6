"""The dashboard in a real headless Chromium against `loraforge serve`: sign in (keyboard
included), files (upload progress, a refused file's problems by line, delete), names for
every control, and the event-stream parser."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.stacks import Stack, hello_dataset, upload
from tests.web.pages import expect, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_in_the_session(page: Any, stack: Stack):
    page.goto("/")
    page.get_by_label("API key").fill("lf-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("This key was refused")
    # Keyboard only: type the key and press Enter.
    page.get_by_label("API key").fill("")
    page.get_by_label("API key").focus()
    page.keyboard.type(stack.key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    assert page.evaluate("Object.values(sessionStorage)") == [stack.key]
    assert page.evaluate("Object.keys(localStorage)") == []
    page.get_by_role("navigation").get_by_role("link", name="Files").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("Object.keys(sessionStorage)") == []


def test_upload_shows_progress_lists_the_file_and_deletes_it(page: Any, stack: Stack):
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="Files").click()
    # Record every value the page gives a progress bar.
    page.evaluate(
        """() => {
          window.progressSeen = [];
          const proto = HTMLProgressElement.prototype;
          const { get, set } = Object.getOwnPropertyDescriptor(proto, 'value');
          Object.defineProperty(proto, 'value', {
            get, configurable: true,
            set(v) { window.progressSeen.push(v); set.call(this, v); },
          });
        }"""
    )
    content = hello_dataset(5000)  # about 0.5 MB: the upload reports progress on the way
    page.get_by_label("JSONL file").set_input_files(
        {"name": "hello.jsonl", "mimeType": "application/jsonl", "buffer": content}
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result")).to_contain_text("Uploaded hello.jsonl as file-")
    expect(page.locator("#upload-result")).to_contain_text("5000 chat examples")
    seen = page.evaluate("window.progressSeen")
    assert seen and max(seen) == 100, seen
    file_id = page.locator("#upload-result").inner_text().split(" as ")[1].split(":")[0]
    row = page.locator(f'#files-table tr[data-file-id="{file_id}"]')
    expect(row).to_contain_text("hello.jsonl")
    expect(row).to_contain_text("5000")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Delete hello.jsonl ({file_id})").click()
    expect(row).to_have_count(0)
    assert stack.client().get(f"/files/{file_id}").status_code == 404


def test_a_refused_file_shows_its_problems_by_line(page: Any, stack: Stack):
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="Files").click()
    good = hello_dataset(12).decode().splitlines()
    lines = [*good[:3], json.dumps({"messages": "not a list"}), *good[3:], "{oops"]
    page.get_by_label("JSONL file").set_input_files(
        {"name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": "\n".join(lines).encode()}
    )
    page.get_by_role("button", name="Upload").click()
    table = page.locator("#problems-table")
    expect(table).to_be_visible()
    expect(table.locator("caption")).to_have_text("Problems in the file (2)")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("4")
    expect(rows.nth(0)).to_contain_text("messages")
    expect(rows.nth(1).locator("td").nth(0)).to_have_text("14")
    expect(rows.nth(1)).to_contain_text("invalid_json")
    expect(page.locator("#upload-problems")).to_contain_text("The file was refused: line 4")


def test_every_control_has_a_name_a_screen_reader_can_read(page: Any, stack: Stack):
    upload(stack.client(), hello_dataset(12))
    sign_in(page, stack.key)
    for view in ("#/new", "#/files", "#/jobs"):
        page.goto(f"/ui/{view}")
        expect(page.locator("main h1")).to_be_focused()
        page.wait_for_load_state("networkidle")
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('main input, main select, main button')]
              .filter(el => !(el.labels?.length || el.getAttribute('aria-label')
                               || el.textContent.trim()))
              .map(el => el.outerHTML)"""
        )
        assert unnamed == [], (view, unnamed)


def test_event_stream_parser_handles_frames_split_anywhere(page: Any):
    page.goto("/ui/")
    frames = page.evaluate(
        """async () => {
          const { createSseParser } = await import('./sse.js');
          const frames = [];
          const parser = createSseParser((frame) => frames.push(frame));
          for (const chunk of ['id: evt-1\\r', '\\nevent: metrics\\ndata: {"a"', ':1}\\n\\n',
                               ': keep-alive\\n\\nevent: done\\ndata: {}\\n', '\\n']) {
            parser.feed(chunk);
          }
          return frames;
        }"""
    )
    assert frames == [
        {"id": "evt-1", "event": "metrics", "data": '{"a":1}'},
        {"id": None, "event": "done", "data": "{}"},
    ]
