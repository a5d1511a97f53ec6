"""What the client commands share: the server connection options, error reporting, output.

Conventions: get/list print JSON on stdout (list: one object per line); actions print
human lines; an id a script may want (a created file or job) is the only stdout line of
its command. Errors print the server's message on stderr and exit 1.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from app.client.archives import UnsafeArchive
from app.client.http import DEFAULT_BASE_URL, ClientError, LoraforgeClient

P = ParamSpec("P")
R = TypeVar("R")

BaseUrlOption = Annotated[
    str,
    typer.Option("--base-url", envvar="LORAFORGE_BASE_URL", help="The server (LORAFORGE_BASE_URL)"),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LORAFORGE_API_KEY",
        help="An API key (LORAFORGE_API_KEY)",
        show_default=False,
    ),
]

stderr = Console(stderr=True, highlight=False)


def connect(ctx: typer.Context, base_url: str, api_key: str | None) -> None:
    """Group callback: a client for the subcommand (tests may already have put one in obj)."""
    if isinstance(ctx.obj, LoraforgeClient):
        return
    try:
        client = LoraforgeClient.connect(base_url or DEFAULT_BASE_URL, api_key)
    except ClientError as exc:
        fail(exc.message)
    ctx.obj = client
    ctx.call_on_close(client.close)


def client_of(ctx: typer.Context) -> LoraforgeClient:
    client = ctx.obj
    assert isinstance(client, LoraforgeClient)
    return client


def fail(message: str, code: int = 1) -> NoReturn:
    note(f"error: {message}")
    raise typer.Exit(code)


def report(error: ClientError) -> None:
    """The server's message; for a refused dataset, its problems one per line."""
    if not error.problems:
        note(f"error: {error.message}")
        return
    count = error.error.get("problem_count", len(error.problems))
    note(f"error: the dataset was refused ({count} problem{'s' if count != 1 else ''}):")
    for problem in error.problems:
        where = f"line {problem['line']}" if problem.get("line") else "file"
        field = f", {problem['field']}" if problem.get("field") else ""
        note(f"  {where}{field}: {problem['message']} ({problem['code']})")
    if count > len(error.problems):
        note(f"  ... and {count - len(error.problems)} more")


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print a failed request's message (and a dataset's problems) and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ClientError as exc:
            report(exc)
            raise typer.Exit(1) from None
        except UnsafeArchive as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            note("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def print_json_lines(values: Iterable[Any]) -> None:
    for value in values:
        typer.echo(json.dumps(value))


def say(message: str) -> None:
    """A human line for an action (stdout)."""
    typer.echo(message)


def note(message: str) -> None:
    """A human line beside machine output, or an error (stderr)."""
    typer.echo(message, err=True)


def all_pages(client: LoraforgeClient, path: str, limit: int | None, **params: Any) -> list[Any]:
    """Every object of a list endpoint (or the newest `limit`), following `after`."""
    found: list[Any] = []
    after = None
    while limit is None or len(found) < limit:
        size = 100 if limit is None else min(100, limit - len(found))
        page = client.get(path, limit=size, after=after, **params)
        found.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            break
        after = page["data"][-1]["id"]
    return found
