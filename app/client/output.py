"""What the client commands share: the server connection options, error reporting, output.

Conventions: get/list print JSON on stdout (list: one object per line); actions print
human lines; an id a script may want (a created file or job) is the only stdout line of
its command. Errors print the server's message on stderr and exit 1.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar, cast

import typer
from rich.console import Console

from app.client.archives import UnsafeArchive
from app.client.http import DEFAULT_BASE_URL, ClientError, LoraforgeClient

P = ParamSpec("P")
R = TypeVar("R")

BaseUrlOption = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="LORAFORGE_BASE_URL",
        help="The server: its root or its /v1 URL (LORAFORGE_BASE_URL)",
    ),
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


def _late_option(name: str, flag: str, description: str) -> inspect.Parameter:
    """The same options after a subcommand's name, where people type them. No envvar: the
    group's option reads it, and one here would override an option given before the name."""
    option = typer.Option(flag, help=description, show_default=False, rich_help_panel="Connection")
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, option]
    )


_LATE_OPTIONS = (
    _late_option("base_url", "--base-url", "The server (or LORAFORGE_BASE_URL)"),
    _late_option("api_key", "--api-key", "An API key (or LORAFORGE_API_KEY)"),
)

stderr = Console(stderr=True, highlight=False)


@dataclass
class Connection:
    """Where a client command connects: the options given, and the client once made."""

    base_url: str
    api_key: str | None
    client: LoraforgeClient | None = None


def connect(ctx: typer.Context, base_url: str, api_key: str | None) -> None:
    """Group callback: remember the options; the client is made when a command needs one, so
    `--help` works without a key (tests may already have put a client in obj)."""
    if not isinstance(ctx.obj, LoraforgeClient):
        ctx.obj = Connection(base_url or DEFAULT_BASE_URL, api_key)


def client_of(ctx: typer.Context) -> LoraforgeClient:
    """The command's client, connected on first use; exits 1 when there is no key."""
    if isinstance(ctx.obj, LoraforgeClient):
        return ctx.obj
    connection = ctx.obj
    assert isinstance(connection, Connection)
    if connection.client is None:
        try:
            connection.client = LoraforgeClient.connect(connection.base_url, connection.api_key)
        except ClientError as exc:
            fail(exc.message)
        ctx.call_on_close(connection.client.close)
    return connection.client


def _take_late_options(ctx: typer.Context, base_url: str | None, api_key: str | None) -> None:
    """Options given after the subcommand win over those before it and the environment."""
    if isinstance(ctx.obj, Connection):
        ctx.obj.base_url = base_url or ctx.obj.base_url
        ctx.obj.api_key = api_key or ctx.obj.api_key


def client_command(command: Callable[P, R]) -> Callable[P, R]:
    """A client subcommand: also takes --base-url and --api-key after its name; a failed
    request prints the server's message (and a dataset's problems) and exits 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _take_late_options(
            cast(typer.Context, kwargs["ctx"]),
            cast("str | None", kwargs.pop("base_url", None)),
            cast("str | None", kwargs.pop("api_key", None)),
        )
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

    # Typer reads a command's options from its signature: add the two to the wrapper's.
    signature = inspect.signature(command, eval_str=True)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *_LATE_OPTIONS]
    )
    wrapper.__annotations__ = {
        **{name: param.annotation for name, param in signature.parameters.items()},
        **{param.name: param.annotation for param in _LATE_OPTIONS},
        "return": signature.return_annotation,
    }
    return wrapper


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
