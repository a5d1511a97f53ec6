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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stacks import (
    JOB_TIMEOUT_S,
    Stack,
    checkpoint_steps,
    create_job,
    embedded_stack,
    events,
    hello_dataset,
    metric_steps,
    postgres_redis_stack,
    upload,
    wait_export,
    wait_status,
)
from tests.live import START_TIMEOUT_S, loraforge_in, wait_for

pytestmark = pytest.mark.slow

TINY = "loraforge/tiny-random-llama"
README = Path(__file__).resolve().parents[2] / "README.md"

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


@pytest.fixture(autouse=True)
def no_job_left_training(stack: Stack) -> Iterator[None]:
    """After each test, cancel what it left unfinished: a test that timed out would leave its
    job holding the stack's only worker, and every later test would wait behind it."""
    yield
    client = stack.client()
    for job in client.get("/fine_tuning/jobs", params={"limit": 100}).json()["data"]:
        if job["status"] in ("validating_files", "queued", "running", "paused"):
            client.post(f"/fine_tuning/jobs/{job['id']}/cancel")


def extract(content: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


@dataclass
class Trained:
    """A job trained through the API, its merged export, and what a tenant downloaded."""

    job: dict[str, Any]
    export: dict[str, Any]
    adapter: bytes  # GET .../adapter
    checkpoint_adapter: bytes  # GET .../checkpoints/{id}/adapter, step 8
    merged: bytes  # GET .../exports/{id}/content


@pytest.fixture(scope="module")
def trained(stack: Stack) -> Trained:
    """One job, trained once for the module's artifact tests (the tiny model, 24 steps)."""
    client = stack.client()
    train = upload(client, hello_dataset(40))
    valid = upload(client, hello_dataset(12), "valid.jsonl")
    created = create_job(client, train, max_steps=24, checkpoint_every_steps=8, eval_every_steps=8)
    assert valid  # the validation file is accepted alongside
    client.post("/fine_tuning/jobs", json={})  # noise: a bad request must not disturb the run
    finished = wait_status(client, created["id"], "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    job_path = f"/fine_tuning/jobs/{created['id']}"
    export = client.post(f"{job_path}/exports", json={"type": "merged", "dtype": "float32"})
    assert export.status_code == 200, export.text
    export_path = f"{job_path}/exports/{export.json()['id']}"
    done = wait_export(client, export_path)
    assert done["status"] == "succeeded", done
    checkpoints = client.get(f"{job_path}/checkpoints").json()["data"]
    (step_8,) = [c for c in checkpoints if c["step_number"] == 8]

    def download(path: str) -> bytes:
        response = client.get(path)
        assert response.status_code == 200, response.text
        return response.content

    return Trained(
        job=finished,
        export=done,
        adapter=download(f"{job_path}/adapter"),
        checkpoint_adapter=download(f"{job_path}/checkpoints/{step_8['id']}/adapter"),
        merged=download(f"{export_path}/content"),
    )


@pytest.fixture(scope="module")
def pulled_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`loraforge models pull` as a tenant runs it at home: no server, no key, no data dir."""
    home = tmp_path_factory.mktemp("home")
    pulled = loraforge_in(home, "models", "pull", TINY, "--out", "base", HF_HUB_OFFLINE="1")
    assert pulled.returncode == 0, pulled.stderr
    return home / "base"


def test_upload_train_download_adapter_and_merged_export(
    stack: Stack, trained: Trained, tmp_path: Path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    client, job_id = stack.client(), trained.job["id"]
    assert trained.job["fine_tuned_model"].startswith(f"ft:{TINY}:")
    assert trained.job["trained_tokens"] > 0
    steps = metric_steps(client, job_id)
    assert [s for s, _ in steps] == list(range(1, 25))
    first, last = steps[0][1], steps[-1][1]
    assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
    assert checkpoint_steps(client, job_id) == [8, 16, 24]

    (results_file,) = trained.job["result_files"]
    csv = client.get(f"/files/{results_file}/content").text
    assert csv.splitlines()[0].startswith("step,") and len(csv.splitlines()) == 25

    adapter_dir = extract(trained.adapter, tmp_path / "adapter")
    base_dir = stack.data_dir / "models" / "loraforge--tiny-random-llama" / "v2"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())

    merged_dir = extract(trained.merged, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in loaded.named_parameters())


def test_downloads_name_the_catalog_model_and_no_server_path(
    stack: Stack, trained: Trained, tmp_path: Path
):
    directories = {
        name: extract(content, tmp_path / name)
        for name, content in (
            ("adapter", trained.adapter),
            ("checkpoint", trained.checkpoint_adapter),
            ("merged", trained.merged),
        )
    }
    for name in ("adapter", "checkpoint"):
        config = json.loads((directories[name] / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == TINY
    export = json.loads((directories["merged"] / "export.json").read_text())
    assert export["base_model"] == TINY and "path" not in export
    # The data dir as the server knows it, and the names of its model cache.
    markers = {str(stack.data_dir), str(stack.data_dir.resolve()), "loraforge--tiny-random-llama"}
    files = [p for d in directories.values() for p in sorted(d.rglob("*")) if p.is_file()]
    assert len(files) >= 15
    leaks = [
        (str(p.relative_to(tmp_path)), m)
        for p in files
        for m in markers
        if m.encode() in p.read_bytes()
    ]
    assert leaks == []


def test_a_checkpoint_download_holds_the_tokenizer_and_chat_template(
    trained: Trained, tmp_path: Path
):
    from transformers import AutoTokenizer

    checkpoint = extract(trained.checkpoint_adapter, tmp_path / "checkpoint")
    final = extract(trained.adapter, tmp_path / "final")
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert not names & {"optimizer.pt", "rng.pt", "trainer_state.json", "COMPLETE"}
    chat = [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello!"}]
    assert AutoTokenizer.from_pretrained(checkpoint).apply_chat_template(chat) == (
        AutoTokenizer.from_pretrained(final).apply_chat_template(chat)
    )


def test_the_adapter_on_a_pulled_base_gives_the_workers_output(
    stack: Stack, trained: Trained, pulled_base: Path, tmp_path: Path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workers = stack.data_dir / "models" / "loraforge--tiny-random-llama" / "v2"
    assert tree(pulled_base) == tree(workers)  # the same bytes the worker trained on
    adapter_dir = extract(trained.adapter, tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    at_home = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(pulled_base), adapter_dir
    ).eval()
    # The worker's own base + adapter, as it merged them into the export (float32).
    merged = AutoModelForCausalLM.from_pretrained(extract(trained.merged, tmp_path / "m")).eval()
    with torch.no_grad():
        for text in ("Say hello number 2", "The capital of France is"):
            inputs = tokenizer(text, return_tensors="pt")
            mine, workers_logits = at_home(**inputs).logits, merged(**inputs).logits
            assert torch.allclose(mine, workers_logits, atol=1e-4), (
                (mine - workers_logits).abs().max()
            )


def test_the_readme_peft_example_runs_offline_on_the_pulled_base(
    trained: Trained, pulled_base: Path
):
    example = README.read_text().split("<!-- peft-example", 1)[1]
    code = example.split("```python\n", 1)[1].split("```", 1)[0]
    job_id = trained.job["id"]
    extract(trained.adapter, pulled_base.parent / f"adapters-{job_id}")
    code = code.replace("adapters/ftjob-…-adapter", f"adapters-{job_id}/{job_id}-adapter")
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=pulled_base.parent,  # where `models pull --out base` wrote it
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_readme_walk_through_waits_for_the_export_before_downloading_it(
    stack: Stack, trained: Trained, tmp_path: Path
):
    walk_through = README.read_text().split("## Walk-through with curl", 1)[1].split("```", 2)[1]
    wait_and_download = walk_through[walk_through.index("# The export is built by a worker") :]
    job_path = f"/fine_tuning/jobs/{trained.job['id']}"
    client = stack.client()
    export = client.post(f"{job_path}/exports", json={"type": "merged", "dtype": "bfloat16"})
    assert export.json()["status"] == "queued"  # not built yet: the lines must wait for it
    script = wait_and_download.replace("ftjob-…", trained.job["id"]).replace(
        "ftexp-…", export.json()["id"]
    )
    ran = subprocess.run(
        ["bash", "-eu", "-c", script],
        cwd=tmp_path,
        env={
            **os.environ,
            "API": f"{stack.base_url}/v1",
            "AUTH": f"Authorization: Bearer {stack.key}",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    merged = extract((tmp_path / "merged.tar.gz").read_bytes(), tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()


def tree(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


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
    # The rest of PAUSE_STEPS takes longer than a plain job on a loaded 2-core machine.
    finished = wait_status(client, created["id"], "succeeded", "failed", timeout=2 * JOB_TIMEOUT_S)
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
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        # The server's root, as the CLI takes it (the example adds /v1 for the SDK).
        env={**os.environ, "LORAFORGE_API_KEY": stack.key, "LORAFORGE_BASE_URL": stack.base_url},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "fine-tuned model: ft:loraforge/tiny-random-llama:" in ran.stdout
    with tarfile.open(out) as archive:
        names = archive.getnames()
    assert any(name.endswith("adapter_model.safetensors") for name in names)
