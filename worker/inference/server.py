"""`loraforge inference`: an OpenAI-protocol server (chat completions, completions, models)
with vLLM's runtime adapter endpoints, on transformers + peft.

The API is its only client: it authorizes tenants, resolves their model names to (base,
adapter) and asks this server to load an adapter when a request finds it missing (404), as
it would ask vLLM. Keep this port off the public network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.config import Settings, get_settings
from app.observability.logs import configure_logging
from app.observability.requests import RequestLogMiddleware
from app.schemas.completions import (
    ChatCompletionRequest,
    CompletionRequest,
    InferenceModel,
    InferenceModelList,
    LoadLoraAdapterRequest,
    UnloadLoraAdapterRequest,
)
from app.storage import build_storage
from worker.inference.engine import InferenceError
from worker.inference.registry import ModelRegistry
from worker.inference.serving import OpenAIServing

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.1
T = TypeVar("T")


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def _inference_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferenceError)
    return error_response(exc.status, exc.code, exc.message, exc.param)


async def _unexpected_error(_request: Request, exc: Exception) -> Response:
    log.exception("inference failed", exc_info=exc)
    return error_response(500, "internal_error", "the inference server failed on this request")


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())[1:]]
    param = ".".join(loc) or None
    return error_response(400, "invalid_request", f"{param or 'request'}: {first['msg']}", param)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled when the client goes away first (its choices then stop)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not done and await request.is_disconnected():
            task.cancel()
    return task.result()


def create_inference_app(settings: Settings | None = None) -> FastAPI:
    """The inference server for `settings`' catalog and storage."""
    settings = settings or get_settings()
    registry = ModelRegistry(settings, build_storage(settings))
    serving = OpenAIServing(registry)
    app = FastAPI(title="loraforge inference", version="0.1.0")
    app.add_middleware(RequestLogMiddleware)
    app.state.registry = registry
    app.add_exception_handler(InferenceError, _inference_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> InferenceModelList:
        return InferenceModelList(
            data=[
                InferenceModel(id=name, root=base or name, parent=base)
                for name, base in registry.models()
            ]
        )

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> Response:
        loaded = await run_in_threadpool(registry.load_adapter, body.lora_name, body.lora_path)
        verb = "added" if loaded else "was already loaded"
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' {verb} successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> Response:
        await run_in_threadpool(registry.unload_adapter, body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await respond(request, serving.chat(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await respond(request, serving.complete(body))

    return app


async def respond(request: Request, work: Awaitable[Any]) -> Response:
    """A JSON response, or a server-sent event stream (which Starlette ends, and so stops
    the generation, when the client disconnects)."""
    result = await until_disconnected(request, work)
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream")
    return JSONResponse(result.model_dump(mode="json"))


def run_inference_server(settings: Settings, host: str, port: int) -> None:
    """Block serving until interrupted."""
    import uvicorn

    from worker.training.quiet import library_logs_to_root

    chosen = configure_logging(settings.log_format, settings.log_level)
    library_logs_to_root(progress_bars=chosen == "text")
    # Logging is ours: uvicorn configures none, and the middleware writes the access lines.
    uvicorn.run(
        create_inference_app(settings), host=host, port=port, log_config=None, access_log=False
    )
