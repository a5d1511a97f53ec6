"""`loraforge chat MODEL` and `loraforge models list`: use a base or fine-tuned model over the
API's chat completions, streamed as it is generated."""

from __future__ import annotations

from typing import Annotated, Any, TextIO

import typer

from app.client.http import ClientError, LoraforgeClient
from app.client.output import (
    ApiKeyOption,
    BaseUrlOption,
    client_command,
    client_of,
    connect,
    note,
    print_json_lines,
    report,
)

EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})


def stream_reply(
    client: LoraforgeClient, body: dict[str, Any], out: TextIO | None = None
) -> tuple[str, dict[str, Any] | None]:
    """Print the reply as it streams in; (its text, its usage)."""
    text, usage = "", None
    for chunk in client.chat(body):
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            text += delta
            typer.echo(delta, nl=False, file=out)
    typer.echo("", file=out)
    return text, usage


def chat(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A base model, ft:... model or checkpoint name")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Send one message, print the answer, exit")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message to begin with")] = None,
    temperature: Annotated[float, typer.Option(min=0, max=2)] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 512,
    base_url: BaseUrlOption = "",
    api_key: ApiKeyOption = None,
) -> None:
    """Chat with a model, streamed. Interactive until Ctrl-D or `exit`; with --message, one
    answer on stdout."""
    connect(ctx, base_url, api_key)
    try:
        converse(client_of(ctx), model, message, system, temperature, max_tokens)
    except ClientError as exc:
        report(exc)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def converse(
    client: LoraforgeClient,
    model: str,
    message: str | None,
    system: str | None,
    temperature: float,
    max_tokens: int,
) -> None:
    """One answer to `message`, or a conversation read from the terminal."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    settings = {"model": model, "temperature": temperature, "max_tokens": max_tokens}
    if message is not None:
        history.append({"role": "user", "content": message})
        stream_reply(client, {**settings, "messages": history})
        return
    note(f"chatting with {model} (Ctrl-D or 'exit' to end)")
    while True:
        try:
            line = typer.prompt("you", prompt_suffix="> ")
        except (EOFError, typer.Abort):
            note("")
            return
        if line.strip().lower() in EXIT_WORDS:
            return
        history.append({"role": "user", "content": line})
        text, usage = stream_reply(client, {**settings, "messages": history})
        history.append({"role": "assistant", "content": text})
        if usage:
            note(f"[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} tokens]")


def models_list_command(ctx: typer.Context) -> None:
    """The models your key can use (bases and your fine-tuned ones), one JSON per line."""
    print_json_lines(client_of(ctx).get("/models")["data"])


models_list = client_command(models_list_command)


def models_main(
    ctx: typer.Context, base_url: BaseUrlOption = "", api_key: ApiKeyOption = None
) -> None:
    """Connection options for the models commands that ask a server."""
    connect(ctx, base_url, api_key)
