"""The `loraforge` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.client.chat_commands import chat, models_list, models_main
from app.client.files_commands import files_cli
from app.client.jobs_commands import jobs_cli
from app.config import Settings, get_settings

cli = typer.Typer(
    help="loraforge: QLoRA fine-tuning with an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
)
# Open event streams end on shutdown after this long instead of holding the process.
SHUTDOWN_GRACE_S = 5

keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
models_cli = typer.Typer(
    help="Models: list what your key can use (server), pull a base (this machine).",
    no_args_is_help=True,
    callback=models_main,
)
cli.add_typer(models_cli, name="models")
models_cli.command("list")(models_list)
cli.command("chat")(chat)
# Clients of a running server, over HTTP (LORAFORGE_BASE_URL, LORAFORGE_API_KEY).
cli.add_typer(files_cli, name="files")
cli.add_typer(jobs_cli, name="jobs")


def _session_factory(*, create: bool = True):  # type: ignore[no-untyped-def]
    """Sessions on the configured database, migrated first. With create=False (commands that
    only read, or change what exists) an absent database is an error naming where we looked,
    never a new empty one."""
    from app.db.migrate import has_schema, upgrade_head
    from app.db.session import make_engine, make_session_factory

    settings = get_settings()
    url = settings.resolved_database_url()
    if not create and not has_schema(url):
        typer.echo(f"error: no loraforge data found in {_where(settings)}", err=True)
        typer.echo(
            "  run this where `loraforge serve` runs, or set LORAFORGE_DATA_DIR "
            "(or LORAFORGE_DATABASE_URL) to the server's",
            err=True,
        )
        raise typer.Exit(1)
    upgrade_head(url)
    return make_session_factory(make_engine(url))


def _where(settings: Settings) -> str:
    """The database a command looked for, as a user would recognise it (no password)."""
    from sqlalchemy.engine import make_url

    if settings.database_url:
        return make_url(settings.database_url).render_as_string(hide_password=True)
    return f"{settings.data_dir.resolve()} (LORAFORGE_DATA_DIR; no loraforge.db there)"


@cli.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from app.db.migrate import upgrade_head

    upgrade_head(get_settings().resolved_database_url())
    typer.echo("database is at the newest revision", err=True)


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the API server alone (migrations are applied first)."""
    import uvicorn

    from app.api.server_options import HTTP_OPTIONS
    from app.db.migrate import upgrade_head
    from app.observability.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    upgrade_head(settings.resolved_database_url())
    uvicorn.run(
        "app.main:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        **HTTP_OPTIONS,
    )


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes to supervise")] = 1,
    inference: Annotated[
        bool, typer.Option(help="Run an inference server for chat and completions")
    ] = True,
) -> None:
    """API plus supervised workers and an inference server on one machine (SQLite and its
    broker by default)."""
    from app.supervisor import serve as run

    run(get_settings(), host, port, workers, inference=inference)


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues (default: all)")] = "",
    reaper: Annotated[bool, typer.Option(help="Run the reaper in this worker")] = True,
) -> None:
    """A Celery worker: one job at a time, leases, and the reaper."""
    # Training pulls in torch: imported here, never in the API process.
    from worker.main import run_worker

    run_worker(get_settings(), [q for q in queues.split(",") if q] or None, reaper=reaper)


@cli.command()
def inference(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8001,
) -> None:
    """The inference server: chat and completions on base models and LoRA adapters."""
    # Generation pulls in torch: imported here, never in the API process.
    from worker.inference.server import run_inference_server

    run_inference_server(get_settings(), host, port)


@keys_cli.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organization name (created if new)")],
    name: Annotated[str, typer.Option(help="A label for the key")] = "",
) -> None:
    """Create a key; only the key is printed on stdout (shown once, never stored)."""
    from app.db.session import session_scope
    from app.services.keys import create_key, get_or_create_organization

    with session_scope(_session_factory()) as session:
        created = create_key(session, get_or_create_organization(session, org), name)
        typer.echo(f"created key {created.record.id} for organization {org}", err=True)
    typer.echo(created.key)


@keys_cli.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization")] = None,
) -> None:
    """List keys (id, organization, prefix...last4, created, revoked) as JSON lines."""
    from app.db.base import unix
    from app.db.session import session_scope
    from app.services.keys import list_keys

    with session_scope(_session_factory(create=False)) as session:
        for key, organization in list_keys(session, org):
            typer.echo(
                json.dumps(
                    {
                        "id": key.id,
                        "organization": organization,
                        "name": key.name,
                        "redacted": f"{key.prefix}...{key.last4}",
                        "created_at": unix(key.created_at),
                        "last_used_at": unix(key.last_used_at),
                        "revoked_at": unix(key.revoked_at),
                    }
                )
            )


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key-...)")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from app.db.session import session_scope
    from app.services.keys import revoke_key

    with session_scope(_session_factory(create=False)) as session:
        if not revoke_key(session, key_id):
            typer.echo(f"no key {key_id}", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}", err=True)


@models_cli.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A catalog model, e.g. loraforge/tiny-random-llama")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new or empty directory")],
) -> None:
    """Write a base model into --out, to load a downloaded adapter on; prints the directory.

    Built-in models are generated here, the same bytes a worker trains on (no server, no key).
    Hub models come at the catalog's pinned revision (LORAFORGE_MODELS); path models are
    copied from their directory, where it exists.
    """
    catalog = get_settings().catalog()
    if name not in catalog:
        typer.echo(
            f"error: {name!r} is not in this machine's catalog ({', '.join(sorted(catalog))}); "
            "an adapter's adapter_config.json names its base (the hub id and revision)",
            err=True,
        )
        raise typer.Exit(1)
    try:
        from worker.pull import PullError, pull_model

        pull_model(catalog[name], out)
    except ModuleNotFoundError as exc:
        typer.echo(
            f"error: pulling {name} needs {exc.name}: pip install 'loraforge[worker]'", err=True
        )
        raise typer.Exit(1) from None
    except PullError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name} written to {out}", err=True)
    typer.echo(str(out))


@cli.command()
def train(
    spec: Annotated[Path, typer.Argument(help="Job JSON, as POSTed to /v1/fine_tuning/jobs")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the adapter")],
) -> None:
    """Run the training engine locally; the last stdout line is a JSON summary."""
    # The engine pulls in torch: imported here, never in the API process.
    from worker.cli import run_train

    run_train(spec, output, get_settings().data_dir)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
