"""The `loraforge files` and `loraforge jobs` commands as subprocesses against a live
`loraforge serve` (SQLite, one worker, real QLoRA on the tiny model): output, exit codes,
`jobs watch` to the end, downloads extracted, a merged export."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors import safe_open

from tests.e2e.stacks import JOB_TIMEOUT_S, Stack, embedded_stack, hello_dataset
from tests.live import closed_port, loraforge, wait_for

pytestmark = pytest.mark.slow

TINY = "loraforge/tiny-random-llama"
STEPS = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with embedded_stack(tmp_path_factory.mktemp("cli")) as running:
        yield running


@pytest.fixture
def run(stack: Stack):
    env = {"LORAFORGE_BASE_URL": stack.base_url, "LORAFORGE_API_KEY": stack.key}

    def invoke(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return loraforge(env, *args, timeout=timeout)

    return invoke


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "hello.jsonl"
    path.write_bytes(hello_dataset(40))
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_create_wait_watch_download_and_export(run: Any, dataset: Path, tmp_path: Path):
    created = run(
        "jobs", "create", "--model", TINY, "--training-file", str(dataset),
        "--validation-file", str(dataset), "--suffix", "cli", "--max-steps", str(STEPS),
        "--learning-rate", "0.002", "--eval-every", "6", "--checkpoint-every", "6",
        "--no-gradient-checkpointing", "--wait",
        timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    job_id, model = ok(created).split()
    assert job_id.startswith("ftjob-")
    assert model.startswith(f"ft:{TINY}:default:cli:")
    assert "uploaded hello.jsonl as file-" in created.stderr
    assert f"created {job_id}" in created.stderr
    assert "The job has successfully completed" in created.stderr
    assert f"{STEPS}/{STEPS}" in created.stderr  # the progress bar's last state
    assert f"{job_id} succeeded" in created.stderr

    # Watching a finished job replays it and ends the same way.
    watched = run("jobs", "watch", job_id, timeout=JOB_TIMEOUT_S)
    assert ok(watched).strip() == model
    assert f"{job_id} succeeded" in watched.stderr

    job = json.loads(ok(run("jobs", "get", job_id)))
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == model
    listed = [json.loads(line) for line in ok(run("jobs", "list")).splitlines()]
    assert job_id in [j["id"] for j in listed]
    steps = [
        json.loads(c)["step_number"]
        for c in ok(run("jobs", "checkpoints", job_id)).split("\n")
        if c
    ]
    assert steps == [12, 6]

    adapter = ok(run("jobs", "download", job_id, "--out", str(tmp_path / "adapter")))
    assert adapter.strip() == f"extracted {tmp_path / 'adapter' / f'{job_id}-adapter'}"
    weights = tmp_path / "adapter" / f"{job_id}-adapter" / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as tensors:
        assert any("lora_A" in name for name in tensors.keys())  # noqa: SIM118
    ok(run("jobs", "download", job_id, "--checkpoint", "6", "--out", str(tmp_path / "ckpt")))
    assert (tmp_path / "ckpt" / f"{job_id}-step-6-adapter" / "adapter_model.safetensors").is_file()
    missing = run("jobs", "download", job_id, "--checkpoint", "5", "--out", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert "no checkpoint at step 5 (steps: 12, 6)" in missing.stderr

    export = run(
        "jobs", "export", job_id, "--dtype", "float32", "--wait", "--out", str(tmp_path / "merged")
    )
    export_id, extracted = ok(export).splitlines()
    assert export_id.startswith("ftexp-")
    merged = Path(extracted.removeprefix("extracted "))
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    assert f"export {export_id} succeeded" in export.stderr


def test_files_upload_list_and_a_refused_file(run: Any, dataset: Path, tmp_path: Path):
    file_id = ok(run("files", "upload", str(dataset))).strip()
    assert file_id.startswith("file-")
    listed = [json.loads(line) for line in ok(run("files", "list")).splitlines()]
    assert file_id in [f["id"] for f in listed]
    assert json.loads(ok(run("files", "get", file_id)))["stats"]["examples"] == 40

    bad = tmp_path / "bad.jsonl"
    rows = hello_dataset(12).decode().splitlines()
    rows[4] = json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})
    bad.write_text("\n".join(rows) + "\n")
    refused = run("files", "upload", str(bad))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "error: the dataset was refused" in refused.stderr
    assert "line 5, messages[0].role:" in refused.stderr
    assert "(unrecognized_role)" in refused.stderr


def test_pause_resume_cancel_then_watch_exits_non_zero(run: Any, stack: Stack, dataset: Path):
    job_id = ok(
        run("jobs", "create", "-m", TINY, "-t", str(dataset), "--max-steps", "2000",
            "--checkpoint-every", "1000", "--learning-rate", "0.002")
    ).strip()  # fmt: skip
    client = stack.client()
    try:
        pause_resume_cancel(run, client, job_id)
    finally:  # a 2000-step job left running would hold the only worker
        client.post(f"/fine_tuning/jobs/{job_id}/cancel")
    watched = run("jobs", "watch", job_id, timeout=JOB_TIMEOUT_S)
    assert watched.returncode == 1
    assert watched.stdout == ""
    assert watched.stderr.strip().endswith(f"error: {job_id} cancelled")


def pause_resume_cancel(run: Any, client: httpx.Client, job_id: str) -> None:
    def metrics() -> int:
        page = client.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()
        return len([e for e in page["data"] if e["type"] == "metrics"])

    wait_for(lambda: metrics() >= 3, JOB_TIMEOUT_S, "training to start")
    paused = ok(run("jobs", "pause", job_id)).strip()
    assert paused == f"{job_id}: running (pausing after a checkpoint)"
    wait_for(
        lambda: client.get(f"/fine_tuning/jobs/{job_id}").json()["status"] == "paused",
        60,
        "the pause",
    )
    assert ok(run("jobs", "resume", job_id)).strip() == f"{job_id}: queued"
    again = run("jobs", "resume", job_id)
    assert again.returncode == 1
    # queued, or running if the worker took it already
    assert again.stderr.startswith("error: cannot resume a job that is ")
    cancelled = ok(run("jobs", "cancel", job_id)).strip()
    assert cancelled in (
        f"{job_id}: cancelled",
        f"{job_id}: running (stopping after the current step)",
    )


def test_a_failed_job_makes_watch_exit_non_zero_with_the_reason(run: Any, tmp_path: Path):
    long_prompts = tmp_path / "long.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    }
    long_prompts.write_text((json.dumps(row) + "\n") * 12)
    job_id = ok(
        run("jobs", "create", "-m", TINY, "-t", str(long_prompts), "--max-seq-length", "32")
    ).strip()
    watched = run("jobs", "watch", job_id, timeout=JOB_TIMEOUT_S)
    assert watched.returncode == 1
    assert f"error: {job_id} failed: max_seq_length_below_prompt:" in watched.stderr


def test_errors_print_the_server_message(run: Any):
    unknown = run("jobs", "get", "ftjob-doesnotexist")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: no fine-tuning job with id 'ftjob-doesnotexist'"
    bad_model = run("jobs", "create", "-m", "gpt-9", "-t", "file-nope")
    assert bad_model.returncode == 1
    assert "error: model 'gpt-9' is not in this server's catalog" in bad_model.stderr
    with closed_port() as port:
        unreachable = f"http://127.0.0.1:{port}"
        bad_key = loraforge(
            {"LORAFORGE_BASE_URL": unreachable, "LORAFORGE_API_KEY": "lf-x"}, "files", "list"
        )
    assert bad_key.returncode == 1
    assert f"error: cannot reach {unreachable}" in bad_key.stderr


def test_the_server_and_key_given_after_the_subcommand_are_the_ones_used(stack: Stack):
    bare = {"LORAFORGE_BASE_URL": "", "LORAFORGE_API_KEY": ""}
    listed = loraforge(
        bare, "files", "list", "--api-key", stack.key, "--base-url", f"{stack.base_url}/v1"
    )
    assert listed.returncode == 0, listed.stderr
    wrong = {"LORAFORGE_BASE_URL": stack.base_url, "LORAFORGE_API_KEY": "lf-wrong"}
    refused = loraforge(wrong, "jobs", "list")
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")
    # After the subcommand wins over before it, which wins over the environment.
    assert ok(loraforge(wrong, "jobs", "--api-key", "lf-x", "list", "--api-key", stack.key)) == (
        ok(loraforge({**wrong, "LORAFORGE_API_KEY": stack.key}, "jobs", "list"))
    )
    assert loraforge(wrong, "jobs", "--api-key", stack.key, "list").returncode == 0
