"""Jobs that run and survive, with real processes: `loraforge serve` (SQLite + SQLite broker)
and `loraforge api` + `loraforge worker` on Postgres + Redis. Real QLoRA on the tiny model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stacks import (
    Stack,
    checkpoint_steps,
    create_job,
    embedded_stack,
    events,
    hello_dataset,
    metric_steps,
    postgres_redis_stack,
    upload,
    wait_status,
)
from tests.live import START_TIMEOUT_S, wait_for

pytestmark = pytest.mark.slow

PAUSE_STEPS = 300


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("postgres-redis", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(request.param)
    make = embedded_stack if request.param == "embedded" else postgres_redis_stack
    with make(root) as running:
        yield running


def extract(content: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


def test_upload_train_download_adapter_and_merged_export(stack: Stack, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.catalog import BUILTIN_MODELS
    from worker.training.models import resolve_model_dir

    client = stack.client()
    train = upload(client, hello_dataset(40))
    valid = upload(client, hello_dataset(12), "valid.jsonl")
    created = create_job(client, train, max_steps=24, checkpoint_every_steps=8, eval_every_steps=8)
    client.post("/fine_tuning/jobs", json={})  # noise: a bad request must not disturb the run
    finished = wait_status(client, created["id"], "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["fine_tuned_model"].startswith("ft:loraforge/tiny-random-llama:")
    assert finished["trained_tokens"] > 0
    assert valid  # the validation file is accepted alongside

    steps = metric_steps(client, created["id"])
    assert [s for s, _ in steps] == list(range(1, 25))
    first, last = steps[0][1], steps[-1][1]
    assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
    assert checkpoint_steps(client, created["id"]) == [8, 16, 24]

    (results_file,) = finished["result_files"]
    csv = client.get(f"/files/{results_file}/content").text
    assert csv.splitlines()[0].startswith("step,") and len(csv.splitlines()) == 25

    adapter = client.get(f"/fine_tuning/jobs/{created['id']}/adapter")
    assert adapter.status_code == 200, adapter.text
    adapter_dir = extract(adapter.content, tmp_path / "adapter")
    base_dir = resolve_model_dir(BUILTIN_MODELS[0], stack.data_dir / "models")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())

    export = client.post(
        f"/fine_tuning/jobs/{created['id']}/exports", json={"type": "merged", "dtype": "float32"}
    )
    assert export.status_code == 200, export.text
    export_id = export.json()["id"]
    done = wait_for(
        lambda: (lambda e: e if e["status"] in ("succeeded", "failed") else None)(
            client.get(f"/fine_tuning/jobs/{created['id']}/exports/{export_id}").json()
        ),
        120,
        "the export",
    )
    assert done["status"] == "succeeded", done
    merged = client.get(f"/fine_tuning/jobs/{created['id']}/exports/{export_id}/content")
    merged_dir = extract(merged.content, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in loaded.named_parameters())


def test_kill_9_mid_training_resumes_from_the_last_checkpoint(stack: Stack):
    client = stack.client()
    created = create_job(
        client, upload(client, hello_dataset(40)), max_steps=60, checkpoint_every_steps=10
    )
    wait_for(
        lambda: max(checkpoint_steps(client, created["id"]), default=0) >= 20,
        180,
        "two checkpoints",
    )
    # What a kill inside a checkpoint's save leaves (planted: a kill seldom lands in one).
    checkpoints = stack.data_dir / "jobs" / created["id"] / "checkpoints"
    (checkpoints / ".step-25-k1ll3d" / "adapter").mkdir(parents=True)
    stack.kill_worker()
    finished = wait_status(client, created["id"], "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2
    messages = [e["message"] for e in events(client, created["id"])]
    resumed = [m for m in messages if m.startswith("Attempt 2 resuming from checkpoint step-")]
    assert resumed, messages
    resumed_step = int(resumed[0].rsplit("step-", 1)[1])
    assert resumed_step >= 20
    steps = [s for s, _ in metric_steps(client, created["id"])]
    assert set(steps) == set(range(1, 61))
    # Steps are trained twice only between the checkpoint and the kill: at most one interval.
    repeated = {s for s in steps if steps.count(s) > 1}
    assert all(resumed_step < s <= resumed_step + 10 for s in repeated), repeated
    assert checkpoint_steps(client, created["id"])[-1] == 60
    left = [p.name for p in checkpoints.iterdir() if not (p / "COMPLETE").is_file()]
    assert not left, left


def test_cancel_during_training_stops_promptly(stack: Stack):
    client = stack.client()
    created = create_job(
        client, upload(client, hello_dataset(40)), max_steps=2000, checkpoint_every_steps=1000
    )
    wait_for(lambda: len(metric_steps(client, created["id"])) >= 3, 180, "training to start")
    response = client.post(f"/fine_tuning/jobs/{created['id']}/cancel")
    assert response.json()["cancel_requested"] is True
    finished = wait_status(client, created["id"], "cancelled", timeout=15)
    last_step = max(s for s, _ in metric_steps(client, created["id"]))
    assert last_step < 2000
    assert finished["finished_at"] is not None
    assert any(
        m["message"].startswith("Fine-tuning job cancelled at step")
        for m in events(client, created["id"])
    )


def test_pause_then_resume_continues_the_loss_curve(stack: Stack):
    client = stack.client()
    # Enough steps that the pause lands mid-run on a fast CPU too: metrics become visible in
    # 0.3 s batches, and 40 steps of the tiny model could all run inside one of them.
    created = create_job(
        client,
        upload(client, hello_dataset(40)),
        max_steps=PAUSE_STEPS,
        checkpoint_every_steps=10**4,
    )
    wait_for(lambda: len(metric_steps(client, created["id"])) >= 10, 180, "ten steps")
    client.post(f"/fine_tuning/jobs/{created['id']}/pause")
    wait_status(client, created["id"], "paused", timeout=30)
    (paused_at,) = checkpoint_steps(client, created["id"])
    before = dict(metric_steps(client, created["id"]))
    resumed = client.post(f"/fine_tuning/jobs/{created['id']}/resume").json()
    assert resumed["status"] in ("queued", "running")  # a fast worker may already have it
    finished = wait_status(client, created["id"], "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2
    steps = metric_steps(client, created["id"])
    assert [s for s, _ in steps] == list(range(1, PAUSE_STEPS + 1))
    after_first = dict(steps)[paused_at + 1]
    # Continuing, not restarting: the loss right after resuming is near where it paused.
    assert after_first < before[1] - 0.3
    assert abs(after_first - before[paused_at]) < 1.0


def test_bad_data_fails_with_a_message_the_user_can_act_on(stack: Stack):
    client = stack.client()
    long_prompt = [
        {
            "messages": [
                {"role": "user", "content": "word " * 200},
                {"role": "assistant", "content": "ok"},
            ]
        }
    ] * 12
    content = "".join(json.dumps(r) + "\n" for r in long_prompt).encode()
    created = create_job(client, upload(client, content), max_seq_length=32)
    finished = wait_status(client, created["id"], "failed", "succeeded")
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "max_seq_length_below_prompt"
    assert "max_seq_length" in finished["error"]["message"]
    assert "Traceback" not in str(finished["error"])


def test_examples_quickstart_runs_against_the_server(stack: Stack, tmp_path: Path):
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "adapter.tar.gz"
    ran = subprocess.run(
        [
            sys.executable,
            str(repo / "examples" / "openai_quickstart.py"),
            "--base-url",
            f"{stack.base_url}/v1",
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        env={**os.environ, "LORAFORGE_API_KEY": stack.key},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "fine-tuned model: ft:loraforge/tiny-random-llama:" in ran.stdout
    with tarfile.open(out) as archive:
        names = archive.getnames()
    assert any(name.endswith("adapter_model.safetensors") for name in names)
