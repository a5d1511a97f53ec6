"""`loraforge files` and `loraforge jobs` in process, against the real app through a
TestClient (an httpx.Client): output formats, exit codes and the requests they make."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner, Result

from app.cli import cli
from app.client.files_commands import files_cli, upload_file
from app.client.http import LoraforgeClient
from app.client.jobs_commands import jobs_cli
from tests.conftest import RecordingEnqueuer, published
from tests.factories import Tenant, chat_dataset, jsonl, preference_dataset
from tests.live import closed_port

runner = CliRunner()


@pytest.fixture
def run(client: TestClient, tenant_a: Tenant):
    def invoke(*args: str) -> Result:
        # TestClient speaks httpx's API (it is an httpx2.Client): the app, in process.
        http = cast(httpx.Client, client)
        return runner.invoke(cli, list(args), obj=LoraforgeClient(http, tenant_a.key))

    return invoke


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_dataset(12))
    return path


def test_upload_prints_only_the_file_id_on_stdout(run: Any, dataset: Path):
    result = run("files", "upload", str(dataset))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("file-")
    assert "12 chat examples" in result.stderr
    listed = [json.loads(line) for line in run("files", "list").stdout.splitlines()]
    assert [f["id"] for f in listed] == [result.stdout.strip()]


def test_refused_upload_exits_1_with_each_problem_by_line(run: Any, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(chat_dataset(11) + jsonl({"messages": "nope"}, "not json"))
    result = run("files", "upload", str(bad))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: the dataset was refused (2 problems):" in result.stderr
    assert "line 12, messages:" in result.stderr
    assert "line 13" in result.stderr and "(invalid_json)" in result.stderr


def test_create_sends_only_the_options_given(
    run: Any, dataset: Path, client: TestClient, enqueuer: RecordingEnqueuer
):
    created = run(
        "jobs", "create", "--model", "loraforge/tiny-random-llama", "--training-file",
        str(dataset), "--epochs", "2", "--lr-multiplier", "0.5", "--r", "8", "--alpha", "16",
        "--bits", "none", "--max-steps", "30", "--packing", "--target-modules", "q_proj,v_proj",
        "--suffix", "demo", "--metadata", "team=nlp",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    job_id = created.stdout.strip().splitlines()[-1]
    assert job_id.startswith("ftjob-")
    published(client)
    assert enqueuer.sent[-1].args == [job_id]
    job = json.loads(run("jobs", "get", job_id).stdout)
    assert job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["learning_rate_multiplier"] == 0.5
    assert job["hyperparameters"]["batch_size"] == 4  # auto, resolved by the server
    assert job["lora"] | {"dropout": None} == {
        "r": 8, "alpha": 16.0, "dropout": None, "target_modules": ["q_proj", "v_proj"]
    }  # fmt: skip
    assert job["quantization"]["bits"] is None
    assert job["training"]["max_steps"] == 30
    assert job["training"]["packing"] is True
    assert job["training"]["max_seq_length"] == 1024  # a default, left to the server
    assert job["metadata"] == {"team": "nlp"}


def test_create_with_method_dpo_sends_openais_method_shape_with_beta(
    run: Any, tmp_path: Path, client: TestClient
):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(preference_dataset(12))
    created = run(
        "jobs", "create", "-m", "loraforge/tiny-random-llama", "-t", str(pairs),
        "--method", "dpo", "--beta", "0.3", "--epochs", "2",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    job = json.loads(run("jobs", "get", created.stdout.strip().splitlines()[-1]).stdout)
    assert job["method"]["type"] == "dpo"
    hyperparameters = job["method"]["dpo"]["hyperparameters"]
    assert (hyperparameters["beta"], hyperparameters["n_epochs"]) == (0.3, 2)


def test_beta_without_method_dpo_is_a_usage_error(run: Any, dataset: Path):
    refused = run(
        "jobs", "create", "-m", "loraforge/tiny-random-llama", "-t", str(dataset), "--beta", "0.1"
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "add --method dpo" in refused.output
    unknown = run(
        "jobs", "create", "-m", "loraforge/tiny-random-llama", "-t", str(dataset), "--method", "rl"
    )  # fmt: skip
    assert unknown.exit_code == 2
    assert "use supervised or dpo" in unknown.output


def test_actions_print_human_lines_and_bad_states_exit_1(run: Any, dataset: Path):
    file_id = run("files", "upload", str(dataset)).stdout.strip()
    job_id = run("jobs", "create", "-m", "loraforge/tiny-random-llama", "-t", file_id).stdout
    job_id = job_id.strip()
    assert run("jobs", "pause", job_id).stdout.strip() == f"{job_id}: paused"
    assert run("jobs", "resume", job_id).stdout.strip() == f"{job_id}: queued"
    assert run("jobs", "cancel", job_id).stdout.strip() == f"{job_id}: cancelled"
    refused = run("jobs", "resume", job_id)
    assert refused.exit_code == 1
    assert refused.stderr.strip() == "error: cannot resume a job that is cancelled"
    listed = [json.loads(line) for line in run("jobs", "list").stdout.splitlines()]
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "cancelled")]


def test_watch_of_a_cancelled_job_exits_1(run: Any, dataset: Path):
    file_id = run("files", "upload", str(dataset)).stdout.strip()
    job_id = run("jobs", "create", "-m", "loraforge/tiny-random-llama", "-t", file_id).stdout
    run("jobs", "cancel", job_id.strip())
    watched = run("jobs", "watch", job_id.strip())
    assert watched.exit_code == 1
    assert "Fine-tuning job cancelled" in watched.stderr
    assert watched.stderr.strip().endswith(f"error: {job_id.strip()} cancelled")
    assert watched.stdout == ""


def test_unknown_ids_print_the_server_message(run: Any):
    for args in (("jobs", "get", "ftjob-nope"), ("files", "delete", "file-nope")):
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: no ")
    missing = run("jobs", "download", "ftjob-nope", "--out", "/nonexistent/never")
    assert missing.exit_code == 1
    assert "no fine-tuning job with id 'ftjob-nope'" in missing.stderr


def test_missing_key_and_unreachable_server_exit_1(tmp_path: Path):
    no_key = runner.invoke(cli, ["jobs", "list"], env={"LORAFORGE_API_KEY": ""})
    assert no_key.exit_code == 1
    assert "no API key" in no_key.stderr
    with closed_port() as port:
        unreachable = runner.invoke(
            cli,
            ["jobs", "list"],
            env={"LORAFORGE_API_KEY": "lf-x", "LORAFORGE_BASE_URL": f"http://127.0.0.1:{port}"},
        )
    assert unreachable.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}" in unreachable.stderr


def client_subcommands() -> list[tuple[str, str]]:
    return [
        (group, command.name or "")
        for group, typer_app in (("files", files_cli), ("jobs", jobs_cli))
        for command in typer_app.registered_commands
    ]


@pytest.mark.parametrize(("group", "command"), client_subcommands())
def test_every_client_subcommand_prints_help_without_a_key(group: str, command: str):
    result = runner.invoke(cli, [group, command, "--help"], env={"LORAFORGE_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and f"{group} {command}" in result.stdout
    assert "--api-key" in result.stdout and "--base-url" in result.stdout
    assert "no API key" not in result.output


def test_connection_options_are_taken_after_the_subcommand_too():
    env = {"LORAFORGE_API_KEY": "", "LORAFORGE_BASE_URL": ""}
    with closed_port() as port:
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"):
            after = runner.invoke(
                cli, ["jobs", "list", "--api-key", "lf-x", "--base-url", url], env=env
            )
            assert after.exit_code == 1
            # The key was taken (no "no API key"), and the server root from either form.
            assert after.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}: ")
        mixed = runner.invoke(
            cli,
            ["files", "--base-url", f"http://127.0.0.1:{port}", "list", "--api-key", "lf-x"],
            env=env,
        )
        assert mixed.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}: ")
    no_key = runner.invoke(cli, ["jobs", "list", "--base-url", "http://127.0.0.1:1"], env=env)
    assert no_key.stderr.strip() == "error: no API key: set LORAFORGE_API_KEY or pass --api-key"


def test_upload_progress_ends_at_the_average_speed_not_zero(
    client: TestClient, tenant_a: Tenant, dataset: Path
):
    # A terminal's console, recorded: the bar is drawn only on a terminal.
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    file_id = upload_file(
        LoraforgeClient(cast(httpx.Client, client), tenant_a.key), dataset, console=console
    )
    assert file_id.startswith("file-")
    speeds = re.findall(r"(\d+(?:\.\d+)?) (bytes|kB|MB|GB)/s", screen.getvalue())
    assert speeds, screen.getvalue()
    value, _unit = speeds[-1]  # the last frame drawn, once every byte was read
    assert float(value) > 0, screen.getvalue()
