"""`loraforge jobs`: create, list, get, cancel, pause, resume, watch, download and export
fine-tuning jobs on a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.client.files_commands import upload_file
from app.client.http import LoraforgeClient
from app.client.output import (
    ApiKeyOption,
    BaseUrlOption,
    all_pages,
    client_command,
    client_of,
    connect,
    fail,
    note,
    print_json,
    print_json_lines,
    say,
    stderr,
)
from app.client.transfers import checkpoint_adapter_path, fetch_and_extract, wait_for_export
from app.client.watch import JobWatcher

jobs_cli = typer.Typer(
    help="Fine-tuning jobs on a loraforge server (over HTTP).", no_args_is_help=True
)

JobId = Annotated[str, typer.Argument(help="The job's id (ftjob-...)")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Directory to extract into")]


@jobs_cli.callback()
def jobs_main(
    ctx: typer.Context, base_url: BaseUrlOption = "", api_key: ApiKeyOption = None
) -> None:
    connect(ctx, base_url, api_key)


def watch_to_the_end(client: LoraforgeClient, job_id: str) -> None:
    """Follow the job; print its model name, or exit 1 when it failed or was cancelled."""
    job = JobWatcher(client, job_id, stderr).run()
    if job["status"] == "succeeded":
        note(f"{job_id} succeeded ({job.get('trained_tokens') or 0} trained tokens)")
        say(job["fine_tuned_model"])
        return
    error = job.get("error") or {}
    detail = f": {error.get('code')}: {error.get('message')}" if error else ""
    fail(f"{job_id} {job['status']}{detail}")


def _file_id(client: LoraforgeClient, value: str | None) -> str | None:
    """A file id as given, or the id of a local file uploaded first."""
    if value is None or value.startswith("file-") or not Path(value).is_file():
        return value
    return upload_file(client, Path(value))


@jobs_cli.command("create")
@client_command
def create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="A base model from /v1/models")],
    training_file: Annotated[
        str, typer.Option("--training-file", "-t", help="A file id, or a JSONL path to upload")
    ],
    validation_file: Annotated[
        str | None, typer.Option(help="A file id, or a JSONL path to upload")
    ] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the fine-tuned model's name")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    method: Annotated[
        str,
        typer.Option(
            help="supervised, or dpo (preference pairs: the training file's lines have input, "
            "preferred_output and non_preferred_output)"
        ),
    ] = "supervised",
    beta: Annotated[
        float | None, typer.Option(help="DPO only: how far from the base, (0, 2] [default: auto]")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="[default: auto]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: auto]")] = None,
    lr_multiplier: Annotated[float | None, typer.Option(help="[default: auto]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Overrides --lr-multiplier")] = None,
    r: Annotated[int | None, typer.Option("--r", help="LoRA rank [default: 16]")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha [default: 32]")] = None,
    dropout: Annotated[float | None, typer.Option(help="LoRA dropout [default: 0.05]")] = None,
    target_modules: Annotated[
        str | None, typer.Option(help="all-linear, or names separated by commas")
    ] = None,
    bits: Annotated[str | None, typer.Option(help="4, 8 or none [default: 4]")] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="[default: 1024]")] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")
    ] = None,
    gradient_accumulation_steps: Annotated[int | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="[default: paged_adamw_8bit]")] = None,
    lr_scheduler: Annotated[str | None, typer.Option(help="[default: cosine]")] = None,
    warmup_ratio: Annotated[float | None, typer.Option()] = None,
    train_on: Annotated[str | None, typer.Option(help="assistant or all")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE, repeatable", show_default=False)
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retries return one job")] = None,
    wait: Annotated[bool, typer.Option(help="Watch the job until it ends")] = False,
) -> None:
    """Create a job (server defaults for every option left out); prints its id."""
    hyperparameters = _given(
        n_epochs=epochs, batch_size=batch_size, learning_rate_multiplier=lr_multiplier
    )
    method_field = _method(method, beta, hyperparameters)  # checked before any upload
    client = client_of(ctx)
    body = _given(
        model=model,
        training_file=_file_id(client, training_file),
        validation_file=_file_id(client, validation_file),
        suffix=suffix,
        seed=seed,
        metadata=_metadata(metadata),
    )
    body.update(method_field)
    sections = {
        "lora": _given(
            r=r, alpha=alpha, dropout=dropout, target_modules=_target_modules(target_modules)
        ),
        "quantization": _quantization(bits),
        "training": _given(
            learning_rate=learning_rate,
            max_steps=max_steps,
            max_seq_length=max_seq_length,
            packing=packing,
            gradient_checkpointing=gradient_checkpointing,
            gradient_accumulation_steps=gradient_accumulation_steps,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            warmup_ratio=warmup_ratio,
            train_on=train_on,
            eval_every_steps=eval_every,
            checkpoint_every_steps=checkpoint_every,
        ),
    }
    body.update({name: values for name, values in sections.items() if values})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    job = client.post("/fine_tuning/jobs", body, headers=headers)
    note(f"created {job['id']} on {job['model']} ({job['status']})")
    say(job["id"])
    if wait:
        watch_to_the_end(client, job["id"])


def _given(**values: Any) -> dict[str, Any]:
    """The values that were given: the server fills in its defaults for the others."""
    return {name: value for name, value in values.items() if value is not None}


def _method(method: str, beta: float | None, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """`{"method": ...}` in OpenAI's shape, or nothing for a supervised job with no
    hyperparameters given (the server's default)."""
    if method not in ("supervised", "dpo"):
        raise typer.BadParameter("use supervised or dpo", param_hint="--method")
    if method == "dpo":
        dpo_hyperparameters = hyperparameters | _given(beta=beta)
        return {"method": {"type": "dpo", "dpo": {"hyperparameters": dpo_hyperparameters}}}
    if beta is not None:
        raise typer.BadParameter(
            "beta is a DPO hyperparameter: add --method dpo", param_hint="--beta"
        )
    if not hyperparameters:
        return {}
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    if any("=" not in pair for pair in pairs):
        raise typer.BadParameter("use KEY=VALUE", param_hint="--metadata")
    return dict(pair.split("=", 1) for pair in pairs)


def _target_modules(value: str | None) -> str | list[str] | None:
    if value is None or value == "all-linear":
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def _quantization(bits: str | None) -> dict[str, Any]:
    if bits is None:
        return {}
    if bits not in ("4", "8", "none"):
        raise typer.BadParameter("use 4, 8 or none", param_hint="--bits")
    return {"bits": None if bits == "none" else int(bits)}


@jobs_cli.command("list")
@client_command
def list_jobs(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="At most this many, newest first")] = 20,
) -> None:
    """Jobs, newest first, one JSON object per line."""
    print_json_lines(all_pages(client_of(ctx), "/fine_tuning/jobs", limit))


@jobs_cli.command("get")
@client_command
def get_job(ctx: typer.Context, job_id: JobId) -> None:
    """One job as JSON."""
    print_json(client_of(ctx).get(f"/fine_tuning/jobs/{job_id}"))


def _act(ctx: typer.Context, job_id: str, action: str) -> dict[str, Any]:
    job: dict[str, Any] = client_of(ctx).post(f"/fine_tuning/jobs/{job_id}/{action}")
    return job


@jobs_cli.command("cancel")
@client_command
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job: at once when queued or paused, within one step when running."""
    job = _act(ctx, job_id, "cancel")
    pending = " (stopping after the current step)" if job["status"] != "cancelled" else ""
    say(f"{job_id}: {job['status']}{pending}" if pending else f"{job_id}: cancelled")


@jobs_cli.command("pause")
@client_command
def pause(ctx: typer.Context, job_id: JobId) -> None:
    """Pause a job (a running one saves a checkpoint first)."""
    job = _act(ctx, job_id, "pause")
    pending = " (pausing after a checkpoint)" if job["status"] == "running" else ""
    say(f"{job_id}: {job['status']}{pending}")


@jobs_cli.command("resume")
@client_command
def resume(ctx: typer.Context, job_id: JobId) -> None:
    """Resume a paused job from its newest checkpoint."""
    say(f"{job_id}: {_act(ctx, job_id, 'resume')['status']}")


@jobs_cli.command("watch")
@client_command
def watch(ctx: typer.Context, job_id: JobId) -> None:
    """Follow a job with a progress bar until it ends; prints the fine-tuned model's name.
    Exits 1 when the job failed or was cancelled."""
    watch_to_the_end(client_of(ctx), job_id)


@jobs_cli.command("events")
@client_command
def events(
    ctx: typer.Context,
    job_id: JobId,
    limit: Annotated[int | None, typer.Option(help="The newest N")] = None,
) -> None:
    """A job's events, newest first, one JSON object per line."""
    print_json_lines(all_pages(client_of(ctx), f"/fine_tuning/jobs/{job_id}/events", limit))


@jobs_cli.command("checkpoints")
@client_command
def checkpoints(ctx: typer.Context, job_id: JobId) -> None:
    """A job's checkpoints, newest step first, one JSON object per line."""
    print_json_lines(all_pages(client_of(ctx), f"/fine_tuning/jobs/{job_id}/checkpoints", None))


@jobs_cli.command("download")
@client_command
def download(
    ctx: typer.Context,
    job_id: JobId,
    out: OutDir,
    checkpoint: Annotated[
        int | None, typer.Option(help="A checkpoint's step instead of the final adapter")
    ] = None,
) -> None:
    """Download a job's PEFT adapter (or a checkpoint's) and extract it into --out."""
    client = client_of(ctx)
    path = f"/fine_tuning/jobs/{job_id}/adapter"
    if checkpoint is not None:
        path = checkpoint_adapter_path(client, job_id, checkpoint)
    for top in fetch_and_extract(client, path, out):
        say(f"extracted {top}")


@jobs_cli.command("export")
@client_command
def export(
    ctx: typer.Context,
    job_id: JobId,
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32")] = "bfloat16",
    wait: Annotated[bool, typer.Option(help="Wait until the export is built")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Download and extract here (waits)")
    ] = None,
) -> None:
    """Start a merged export (the adapter folded into the base model); prints its id."""
    client = client_of(ctx)
    created = client.post(f"/fine_tuning/jobs/{job_id}/exports", {"type": "merged", "dtype": dtype})
    note(f"started merged export {created['id']} ({dtype})")
    say(created["id"])
    if not (wait or out):
        return
    path = f"/fine_tuning/jobs/{job_id}/exports/{created['id']}"
    finished = wait_for_export(client, path)
    if finished["status"] != "succeeded":
        error = finished.get("error") or {}
        fail(f"export {created['id']} failed: {error.get('message', 'no reason given')}")
    note(f"export {created['id']} succeeded")
    if out is not None:
        for top in fetch_and_extract(client, f"{path}/content", out):
            say(f"extracted {top}")
