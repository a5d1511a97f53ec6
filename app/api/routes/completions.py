"""/v1/chat/completions and /v1/completions: generation on a base model or a fine-tuned one,
proxied to the inference server that serves its base (streams pass straight through)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import CurrentOrgDep, SettingsDep, read_engine
from app.api.routes import ERROR_RESPONSES
from app.api.slots import OrganizationSlots
from app.config import Settings
from app.schemas.common import ErrorResponse
from app.schemas.completions import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from app.services.inference import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    InferenceBackends,
    resolve_model,
)

router = APIRouter(prefix="/v1", tags=["inference"], responses=ERROR_RESPONSES)

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"description": "Chunks, then `data: [DONE]`"}}},
    502: {"model": ErrorResponse, "description": "The inference server could not load the model"},
    503: {"model": ErrorResponse, "description": "No inference server for the model's base"},
}


@router.post("/chat/completions", responses=STREAM_RESPONSE)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    organization_id: CurrentOrgDep,
    settings: SettingsDep,
) -> ChatCompletion:
    """A chat completion from a base model, a fine-tuned model or a checkpoint."""
    limit = min(body.token_limit() or settings.inference_max_tokens, settings.inference_max_tokens)
    payload = body.model_dump(exclude_none=True, exclude={"max_completion_tokens"})
    return await generate(request, organization_id, body.model, CHAT_PATH, payload, limit)  # type: ignore[return-value]


@router.post("/completions", responses=STREAM_RESPONSE)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    organization_id: CurrentOrgDep,
    settings: SettingsDep,
) -> Completion:
    """A text completion from a base model, a fine-tuned model or a checkpoint."""
    limit = min(body.token_limit() or settings.inference_max_tokens, settings.inference_max_tokens)
    payload = body.model_dump(exclude_none=True)
    return await generate(request, organization_id, body.model, COMPLETIONS_PATH, payload, limit)  # type: ignore[return-value]


async def generate(
    request: Request,
    organization_id: str,
    model: str,
    path: str,
    payload: dict[str, Any],
    max_tokens: int,
) -> Response:
    """Resolve the model, hold one of the organization's generation slots for as long as
    the answer takes (a stream included), and relay the inference server's answer."""
    settings: Settings = request.app.state.settings
    async with read_engine(request).connect() as connection:
        target = await connection.run_sync(resolve_model, settings, organization_id, model)
    backends: InferenceBackends = request.app.state.inference
    slots: OrganizationSlots = request.app.state.generation_slots
    slots.take(organization_id)

    async def finish() -> None:
        await upstream.aclose()
        slots.give_back(organization_id)

    try:
        upstream = await backends.send(target, path, {**payload, "max_tokens": max_tokens})
    except BaseException:
        slots.give_back(organization_id)
        raise
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return RelayedStream(upstream, finish)
    try:
        content = await upstream.aread()
    finally:
        await finish()
    return Response(content, status_code=upstream.status_code, media_type="application/json")


class RelayedStream(StreamingResponse):
    """An upstream event stream passed through as it arrives. However the response ends
    (done, or the client gone, the stream never started included), `finish` runs once:
    closing upstream stops the generation there and the slot is given back."""

    def __init__(self, upstream: httpx.Response, finish: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            upstream.aiter_raw(), status_code=upstream.status_code, media_type="text/event-stream"
        )
        self.finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.finish()


def inference_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The API's connections to inference servers: long reads (a generation), short connects."""
    timeout = httpx.Timeout(settings.inference_timeout_s, connect=5.0)
    limits = httpx.Limits(max_connections=1000)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
