"""`loraforge files`: upload, list, get and delete datasets on a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import filesize
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from app.client.http import LoraforgeClient
from app.client.output import (
    ApiKeyOption,
    BaseUrlOption,
    all_pages,
    client_command,
    client_of,
    connect,
    note,
    print_json,
    print_json_lines,
    say,
    stderr,
)

files_cli = typer.Typer(help="Datasets on a loraforge server (over HTTP).", no_args_is_help=True)


@files_cli.callback()
def files_main(
    ctx: typer.Context, base_url: BaseUrlOption = "", api_key: ApiKeyOption = None
) -> None:
    connect(ctx, base_url, api_key)


class AverageSpeedColumn(ProgressColumn):
    """Bytes sent over the time taken, held once every byte is sent.

    rich's TransferSpeedColumn leaves out the first sample's bytes: an upload read in one
    chunk, then the empty read that ends it, showed "0 bytes/s" while the server checked it.
    """

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time or task.elapsed
        if not elapsed or not task.completed:
            return Text("?", style="progress.data.speed")
        speed = filesize.decimal(int(task.completed / elapsed))
        return Text(f"{speed}/s", style="progress.data.speed")


def upload_file(client: LoraforgeClient, path: Path, console: Console = stderr) -> str:
    """Upload with a progress bar on a terminal; the file id. Problems raise ClientError."""
    with Progress(
        TextColumn(f"uploading {path.name}"),
        BarColumn(),
        DownloadColumn(),
        AverageSpeedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    ) as progress:
        task = progress.add_task("upload", total=path.stat().st_size)
        created = client.upload(path, on_read=lambda n: progress.advance(task, n))
    stats = created.get("stats") or {}
    examples = f"{stats.get('examples', '?')} {stats.get('format') or ''} examples"
    note(f"uploaded {path.name} as {created['id']}: {examples}, {created['bytes']} bytes")
    file_id: str = created["id"]
    return file_id


@files_cli.command("upload")
@client_command
def upload(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A JSONL dataset")
    ],
) -> None:
    """Upload a dataset (every line is checked); prints its file id."""
    say(upload_file(client_of(ctx), path))


@files_cli.command("list")
@client_command
def list_files(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="At most this many, newest first")] = None,
    purpose: Annotated[str | None, typer.Option(help="fine-tune or fine-tune-results")] = None,
) -> None:
    """The files, newest first, one JSON object per line."""
    print_json_lines(all_pages(client_of(ctx), "/files", limit, purpose=purpose))


@files_cli.command("get")
@client_command
def get_file(ctx: typer.Context, file_id: Annotated[str, typer.Argument()]) -> None:
    """One file as JSON."""
    print_json(client_of(ctx).get(f"/files/{file_id}"))


@files_cli.command("delete")
@client_command
def delete_file(ctx: typer.Context, file_id: Annotated[str, typer.Argument()]) -> None:
    """Delete a file."""
    client_of(ctx).delete(f"/files/{file_id}")
    say(f"deleted {file_id}")
