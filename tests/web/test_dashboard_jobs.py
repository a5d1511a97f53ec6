"""The dashboard's jobs in a real headless Chromium against `loraforge serve` with a worker
(real QLoRA on the tiny model): a new job with its memory estimate, the live loss chart,
adapter, checkpoint and merged downloads, pause/resume/cancel, the jobs list. Screenshots
of the job page go to test-artifacts/."""

from __future__ import annotations

import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stacks import (
    JOB_TIMEOUT_S,
    Stack,
    create_job,
    hello_dataset,
    upload,
    wait_status,
)
from tests.web.pages import expect, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Long enough for several of the page's 2 s polls while it trains, on a fast CPU too.
TRAIN_STEPS = 400
EVAL_EVERY = TRAIN_STEPS // 4
CHECKPOINT_EVERY = TRAIN_STEPS // 2


def plotted_points(page: Any) -> int:
    """Training-loss points drawn: the vertices of the chart's path (read in one go with the
    count the chart reports, which must agree)."""
    drawn = page.evaluate(
        """() => {
          const chart = document.querySelector('#loss-chart');
          const path = chart?.querySelector('path.train-line')?.getAttribute('d') || '';
          return [(path.match(/[ML]/g) || []).length, Number(chart?.dataset.trainPoints || 0)];
        }"""
    )
    vertices, reported = drawn
    assert vertices == reported, drawn
    return int(vertices)


def job_status(page: Any) -> str:
    text: str = page.locator("#job-status").inner_text()
    return text.strip()


def wait_page(page: Any, predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def saved_download(page: Any, button: Any, into: Path) -> Path:
    with page.expect_download(timeout=60_000) as info:
        button.click()
    download = info.value
    assert download.failure() is None
    path = into / download.suggested_filename
    download.save_as(path)
    return path


def tar_names(path: Path) -> list[str]:
    assert path.read_bytes()[:2] == b"\x1f\x8b", "not gzip"
    with tarfile.open(path, "r:gz") as archive:
        return archive.getnames()


def test_new_job_trains_with_a_live_chart_and_downloads_its_weights(
    page: Any, stack: Stack, artifacts: Path, tmp_path: Path
):
    client = stack.client()
    train = upload(client, hello_dataset(40), "hello-train.jsonl")
    valid = upload(client, hello_dataset(12), "hello-valid.jsonl")
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    expect(page.get_by_label("Model", exact=True)).to_have_value("loraforge/tiny-random-llama")
    page.get_by_label("Training file").select_option(train)
    page.get_by_label("Validation file (optional)").select_option(valid)
    page.get_by_label("Suffix (optional)").fill("browser")
    page.get_by_label("Max steps (optional)").fill(str(TRAIN_STEPS))
    page.get_by_label("Learning rate", exact=True).fill("0.002")
    page.get_by_label("Gradient checkpointing").uncheck()
    page.get_by_label("Evaluate every N steps (optional)").fill(str(EVAL_EVERY))
    page.get_by_label("Checkpoint every N steps (optional)").fill(str(CHECKPOINT_EVERY))
    page.get_by_role("button", name="Estimate memory").click()
    expected = client.post(
        "/fine_tuning/estimates",
        json={
            "model": "loraforge/tiny-random-llama",
            "training_file": train,
            "training": {"max_steps": TRAIN_STEPS, "learning_rate": 0.002,
                         "gradient_checkpointing": False},
        },
    ).json()  # fmt: skip
    mib = expected["memory"]["total_bytes"] / 2**20
    expect(page.locator("#estimate-total")).to_have_text(f"{mib:.1f} MiB")
    expect(page.locator("#estimate")).to_contain_text("Runs on the worker queue training")
    page.get_by_role("button", name="Create job").click()

    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.locator("#job-id").inner_text()
    # The creation is announced on the page it led to.
    expect(page.locator("#status")).to_have_text(f"Created job {job_id}.")
    counts = [plotted_points(page)]
    screenshot_taken = False
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job_status(page) != "succeeded":
        assert job_status(page) not in ("failed", "cancelled"), page.locator(
            "#job-error"
        ).inner_text()
        assert time.monotonic() < deadline, f"job not done; points seen: {counts}"
        counts.append(plotted_points(page))
        if not screenshot_taken and counts[-1] >= 10:
            page.screenshot(path=artifacts / "job-page-training.png", full_page=True)
            screenshot_taken = True
        page.wait_for_timeout(200)
    wait_page(page, lambda: plotted_points(page) == TRAIN_STEPS, 30, "every point")
    counts.append(plotted_points(page))
    assert counts == sorted(counts), counts
    # Points arrived while the job trained, not all at once at the end.
    assert len({c for c in counts if 0 < c < TRAIN_STEPS}) >= 2, counts
    expect(page.locator("#loss-chart circle.eval-point")).to_have_count(TRAIN_STEPS // EVAL_EVERY)
    expect(page.locator("#job-steps")).to_have_text(f"step {TRAIN_STEPS} of {TRAIN_STEPS}")
    expect(page.locator("#job-fine-tuned")).to_contain_text(
        "ft:loraforge/tiny-random-llama:default:browser:"
    )
    for stat in ("#stat-train-loss", "#stat-lr", "#stat-tokens"):
        assert page.locator(stat).inner_text() != "\u2013", stat
    expect(page.locator("#events-log")).to_contain_text("The job has successfully completed")
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(2)
    page.screenshot(path=artifacts / "job-page-succeeded.png", full_page=True)

    adapter = saved_download(page, page.get_by_role("button", name="Download adapter"), tmp_path)
    assert adapter.name == f"{job_id}-adapter.tar.gz"
    assert f"{job_id}-adapter/adapter_model.safetensors" in tar_names(adapter)
    checkpoint = saved_download(
        page,
        page.get_by_role(
            "button", name=f"Download the adapter of checkpoint step {CHECKPOINT_EVERY}"
        ),
        tmp_path,
    )
    assert any(n.endswith("/adapter_model.safetensors") for n in tar_names(checkpoint))

    page.get_by_label("Precision").select_option("float32")
    page.get_by_role("button", name="Start merged export").click()
    row = page.locator("#exports-table tbody tr").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=120_000)
    merged = saved_download(page, row.get_by_role("button"), tmp_path)
    assert any(n.endswith("/model.safetensors") for n in tar_names(merged))


def test_pause_resume_and_cancel_a_second_job(page: Any, stack: Stack, artifacts: Path):
    client = stack.client()
    created = create_job(
        client, upload(client, hello_dataset(40)), max_steps=2000, checkpoint_every_steps=1000
    )
    try:
        pause_resume_cancel(page, stack.key, created["id"], artifacts)
    finally:  # a 2000-step job left running would hold the only worker
        client.post(f"/fine_tuning/jobs/{created['id']}/cancel")
    assert client.get(f"/fine_tuning/jobs/{created['id']}").json()["status"] == "cancelled"


def pause_resume_cancel(page: Any, key: str, job_id: str, artifacts: Path) -> None:
    sign_in(page, key)
    page.goto(f"/ui/#/jobs/{job_id}")
    wait_page(page, lambda: plotted_points(page) >= 3, JOB_TIMEOUT_S, "training to start")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#job-status")).to_have_text("paused", timeout=60_000)
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(1)
    paused_at = plotted_points(page)
    expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    page.get_by_role("button", name="Resume").click()
    wait_page(page, lambda: plotted_points(page) > paused_at + 2, JOB_TIMEOUT_S, "more steps")
    expect(page.locator("#job-status")).to_have_text("running")

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#events-log")).to_contain_text("Fine-tuning job cancelled at step")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.get_by_role("button", name="Download adapter")).to_be_disabled()
    page.screenshot(path=artifacts / "job-page-cancelled.png", full_page=True)


def test_jobs_list_shows_status_and_progress(page: Any, stack: Stack):
    client = stack.client()
    queued = create_job(client, upload(client, hello_dataset(12)))
    client.post(f"/fine_tuning/jobs/{queued['id']}/cancel")
    wait_status(client, queued["id"], "cancelled")
    # With the earlier tests' jobs: one succeeded (40/40), one cancelled mid-run.
    jobs = client.get("/fine_tuning/jobs").json()["data"]
    sign_in(page, stack.key)
    for job in jobs:
        row = page.locator(f'#jobs-table tr[data-job-id="{job["id"]}"]')
        expect(row).to_contain_text(job["status"])
    succeeded = [job for job in jobs if job["status"] == "succeeded"]
    for job in succeeded:
        row = page.locator(f'#jobs-table tr[data-job-id="{job["id"]}"]')
        expect(row).to_contain_text(f"{TRAIN_STEPS}/{TRAIN_STEPS}")
    page.get_by_role("link", name=jobs[-1]["id"]).click()
    expect(page.locator("#job-id")).to_have_text(jobs[-1]["id"])
