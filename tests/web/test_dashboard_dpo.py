"""DPO in the dashboard, in a real headless Chromium against `loraforge serve`: the new-job
form sends OpenAI's method shape with beta (axe-core finding nothing severe with beta shown),
and the job page charts the reward margin and preference accuracy its events carry. The form
also continues a fine-tuned model (supervised, then DPO), inheriting its LoRA."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import File, Job
from app.schemas.spec import Hyperparameters, LoraSpec, QuantizationSpec, TrainingSpec, resolve_spec
from app.services.events import add_event
from tests.e2e.stacks import Stack, upload
from tests.factories import chat_dataset, preference_dataset
from tests.web.pages import expect, sign_in
from tests.web.test_dashboard_pages import AXE_RUN, SEVERE

pytestmark = [pytest.mark.slow, pytest.mark.browser]

BASE = "loraforge/tiny-random-llama"
# Not the form's r=16, alpha=32: a continued job must take the parent's, not the form's.
PARENT_LORA = LoraSpec(r=8, alpha=16, target_modules=["q_proj", "v_proj"])


def add_fine_tuned_model(stack: Stack, training_file: str) -> str:
    """A supervised job that succeeded with PARENT_LORA, straight into the stack's DB (no
    training, no adapter files): its fine_tuned_model is listed and can be continued."""
    engine = create_engine(f"sqlite:///{stack.data_dir / 'loraforge.db'}")
    spec = resolve_spec(
        model=BASE,
        seed=1,
        n_train_examples=12,
        hyperparameters=Hyperparameters(),
        lora=PARENT_LORA,
        quantization=QuantizationSpec(),
        training=TrainingSpec(),
    )
    with Session(engine) as session:
        file = session.get_one(File, training_file)
        job = Job(
            id=new_id("ftjob"),
            organization_id=file.organization_id,
            model=BASE,
            training_file_id=file.id,
            seed=1,
            spec=spec.model_dump(mode="json"),
            status="succeeded",
            result_files=[],
            attempt=1,
            finished_at=utcnow(),
        )
        job.fine_tuned_model = f"ft:{BASE}:default:sft:{job.id[6:14]}"
        session.add(job)
        session.commit()
        name = job.fine_tuned_model
    engine.dispose()
    return name


def add_dpo_metrics(stack: Stack, job_id: str, steps: int) -> None:
    """Metrics events as the engine writes them on a DPO job, straight into the stack's DB."""
    engine = create_engine(f"sqlite:///{stack.data_dir / 'loraforge.db'}")
    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        for step in range(1, steps + 1):
            data = {
                "step": step,
                "total_steps": steps,
                "train_loss": 0.69 / step,
                "train_reward_margin": 0.1 * step,
                "train_preference_accuracy": 0.5 + 0.1 * step,
                "lr": 2e-5,
                "tokens_per_second": 100.0,
                "epoch": step / steps,
                "trained_tokens": 64 * step,
            }
            add_event(session, job, f"Step {step}", type="metrics", data=data)
        session.commit()
    engine.dispose()


def submit_checked_form(page: Any, client: Any) -> dict[str, Any]:
    """Check the form with axe, create the job, cancel it at once; the job as the API has it."""
    violations = [v for v in page.evaluate(AXE_RUN) if v["impact"] in SEVERE]
    assert not violations, violations
    page.get_by_role("button", name="Create job").click()
    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.locator("#job-id").inner_text()
    client.post(f"/fine_tuning/jobs/{job_id}/cancel")
    job: dict[str, Any] = client.get(f"/fine_tuning/jobs/{job_id}").json()
    return job


def test_the_form_sends_a_dpo_job_with_beta_and_its_page_charts_the_preferences(
    open_page: Callable[..., Any], stack: Stack
):
    client = stack.client()
    pairs = upload(client, preference_dataset(12), "pairs.jsonl")
    page = open_page(axe=True)
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    page.get_by_label("Training file").select_option(pairs)
    beta = page.get_by_label("Beta")
    expect(beta).to_be_hidden()
    page.get_by_label("Method").select_option("dpo")
    expect(beta).to_be_visible()
    beta.fill("0.3")
    page.get_by_label("Epochs").fill("2")
    expect(page.locator("#estimate")).to_contain_text("beta 0.3")
    # Only its page is under test: the job is cancelled at once.
    job = submit_checked_form(page, client)
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    expect(page.locator("#job-settings")).to_contain_text("DPO, beta 0.3")

    add_dpo_metrics(stack, job["id"], steps=3)
    page.reload()
    expect(page.locator("#preference-section")).to_be_visible()
    for chart in ("#reward-margin-chart", "#preference-accuracy-chart"):
        expect(page.locator(chart)).to_have_attribute("data-train-points", "3")
    expect(page.locator("#preference-accuracy-chart")).to_have_attribute(
        "aria-label", re.compile(r"latest training preference accuracy 0\.8000")
    )
    violations = [v for v in page.evaluate(AXE_RUN) if v["impact"] in SEVERE]
    assert not violations, violations


def test_the_form_continues_a_fine_tuned_model_with_dpo_on_its_lora(
    open_page: Callable[..., Any], stack: Stack
):
    client = stack.client()
    parent = add_fine_tuned_model(stack, upload(client, chat_dataset(12), "sft.jsonl"))
    pairs = upload(client, preference_dataset(12), "pairs.jsonl")
    page = open_page(axe=True)
    sign_in(page, stack.key)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    model = page.get_by_label("Model", exact=True)
    expect(model.locator('optgroup[label="Fine-tuned models"] option')).to_contain_text([parent])
    expect(model).to_have_value(BASE)  # the bases come first
    lora = page.get_by_role("group", name="LoRA")
    expect(page.get_by_label("Rank (r)")).to_be_enabled()
    model.select_option(parent)
    # Its adapter is the start, so its LoRA layers and quantization are the parent's.
    expect(page.get_by_label("Rank (r)")).to_be_disabled()
    expect(page.get_by_label("Base weights")).to_be_disabled()
    expect(lora.locator(".inherited")).to_be_visible()
    page.get_by_label("Training file").select_option(pairs)
    page.get_by_label("Method").select_option("dpo")
    expect(page.locator("#estimate")).to_contain_text("Runs on the worker queue")
    # The parent has no adapter files: the job is cancelled at once.
    job = submit_checked_form(page, client)
    assert job["model"] == parent
    assert job["method"]["type"] == "dpo"
    assert (job["lora"]["r"], job["lora"]["alpha"]) == (8, 16)
    expect(page.locator("#job-model")).to_have_text(parent)
