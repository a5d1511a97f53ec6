"""create_app(): the FastAPI application, its state, routers and error handlers."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from app.api.guards import ControlCharacterGuard
from app.api.keycache import KeyCache
from app.api.openapi import openapi_document
from app.api.ratelimit import RateLimiter
from app.api.routes import (
    completions,
    estimates,
    exports,
    files,
    health,
    jobs,
    metrics,
    models,
    uploads,
    web,
    webhooks,
)
from app.api.routes.completions import inference_client
from app.api.slots import generation_slots, upload_slots
from app.config import Settings, get_settings
from app.db.migrate import upgrade_head
from app.db.session import (
    in_transactions,
    is_contention,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from app.errors import ApiError, ServiceBusy
from app.observability.logs import bind, configure_logging
from app.observability.metrics import ApiMetrics, MetricsMiddleware
from app.observability.requests import RequestLogMiddleware
from app.queue import CeleryEnqueuer, Enqueuer
from app.services.housekeeping import sweep
from app.services.inference import InferenceBackends
from app.storage import Storage, build_storage

log = logging.getLogger(__name__)

# How long shutting down waits for the publishes still queued (after a failed one, the rest
# fail at once: see BROKER_BACKOFF_S). Those it gives up on are the reaper's, after
# requeue_after_s.
PUBLISH_DRAIN_S = 10.0
# How often the API sweeps (app/services/housekeeping.py): abandoned upload temp files, expired
# files and uploads. Also once at start.
SWEEP_INTERVAL_S = 600.0

HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
}


def _envelope(
    status: int, message: str, *, param: str | None, code: str, type_: str | None = None
) -> dict[str, Any]:
    error_type = type_ or (
        "server_error" if status >= 500 else HTTP_ERROR_TYPES.get(status, "invalid_request_error")
    )
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _present(container: Any, part: Any) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _param_path(loc: tuple[Any, ...], body: Any) -> str | None:
    """The dotted field path of an error, without pydantic's union-member tags.

    A part is kept when it is a key (or index) present in the body at that depth, or when it
    is the last part and names a field missing from an object.
    """
    path = loc[1:] if loc and loc[0] in _SOURCES else loc
    parts: list[str] = []
    current = body
    for index, part in enumerate(path):
        if _present(current, part):
            current = current[part]
            parts.append(str(part))
        elif index == len(path) - 1 and isinstance(current, dict):
            parts.append(str(part))
    return ".".join(parts) or None


_SOURCES = ("body", "query", "path", "header", "cookie")


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    param = _param_path(loc, exc.body if loc[:1] == ("body",) else None)
    if param is None and len(loc) > 1:
        param = str(loc[-1])
    # 400, as OpenAI answers a malformed request: the SDK raises BadRequestError for it.
    body = _envelope(
        400, f"{param or 'request'}: {first.get('msg')}", param=param, code="invalid_request_body"
    )
    body["error"]["details"] = jsonable_encoder(
        [{"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    )
    return JSONResponse(body, status_code=400)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    probe = {**request.scope, "method": ""}
    methods: set[str] = set()
    for route in _all_routes(request.app.router.routes):
        if route.matches(probe)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def _all_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, through included routers (FastAPI keeps each as a nested route list)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _all_routes(included.routes) if included is not None else [route]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return JSONResponse(
        _envelope(exc.status_code, str(exc.detail), param=None, code=code),
        status_code=exc.status_code,
        headers=headers,
    )


async def _database_error(request: Request, exc: Exception) -> Response:
    """A busy database (no connection or lock free in time) is a 503 to retry, not a bug."""
    if not is_contention(exc):
        return await _unexpected_error(request, exc)
    log.warning("database busy: %s", exc)
    busy = ServiceBusy("the service is busy; retry in a moment")
    return JSONResponse(busy.body(), status_code=busy.status_code, headers=busy.headers)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """The client closed the connection mid-request (an aborted upload): nobody to answer."""
    log.info("client disconnected before its request was read")
    return Response(status_code=400)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs outside RequestLogMiddleware (Starlette's outermost layer): the request's log
    # fields come back from its state.
    fields = getattr(request.state, "log_fields", None) or {}
    with bind(**fields):
        log.exception("unhandled error", exc_info=exc)
    headers = {"X-Request-ID": fields["request_id"]} if "request_id" in fields else None
    return JSONResponse(
        _envelope(500, "internal server error", param=None, code="internal_error"),
        status_code=500,
        headers=headers,
    )


async def drain_publisher(publisher: ThreadPoolExecutor) -> None:
    """Wait for the new jobs queued for publishing before this point to be published."""
    try:
        await asyncio.wait_for(asyncio.wrap_future(publisher.submit(lambda: None)), PUBLISH_DRAIN_S)
    except TimeoutError:
        log.warning("new jobs still unpublished after %.0f s; the reaper will", PUBLISH_DRAIN_S)


async def sweep_periodically(factory: sessionmaker[Session], storage: Storage) -> None:
    """Sweep now and every SWEEP_INTERVAL_S, until cancelled."""
    while True:
        await run_in_threadpool(sweep, factory, storage)
        await asyncio.sleep(SWEEP_INTERVAL_S)


def create_app(
    settings: Settings | None = None,
    enqueuer: Enqueuer | None = None,
    inference_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the API; `enqueuer` is the seam tests swap for a recording fake, and
    `inference_transport` the way to the inference servers (tests: one in-process)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_migrations_on_start:
            upgrade_head(settings.resolved_database_url())
        sweeper = asyncio.create_task(
            sweep_periodically(app.state.session_factory, app.state.storage)
        )
        # Made on the serving event loop: its connections belong to that loop.
        client = inference_client(settings, inference_transport)
        app.state.inference = InferenceBackends(settings, app.state.storage, client)
        yield
        sweeper.cancel()
        await client.aclose()
        await drain_publisher(app.state.publisher)
        app.state.engine.dispose()
        await app.state.async_engine.dispose()

    app = FastAPI(
        title="loraforge",
        version="0.1.0",
        description="QLoRA fine-tuning with an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    engine = make_engine(settings.resolved_database_url(), lock_timeout_s=settings.lock_timeout_s)
    async_engine = make_async_engine(
        settings.resolved_database_url(), lock_timeout_s=settings.lock_timeout_s
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.async_engine = async_engine  # autocommits: the read engine
    app.state.read_session_factory = make_async_session_factory(async_engine)
    app.state.write_engine = in_transactions(async_engine)
    app.state.storage = build_storage(settings)
    app.state.enqueuer = enqueuer or CeleryEnqueuer(settings)
    # Where new jobs are published from: one thread, started on the first POST. It outlives a
    # lifespan (a test client may run several); its idle thread ends with the process.
    app.state.publisher = ThreadPoolExecutor(1, thread_name_prefix="publish")
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    app.state.upload_slots = upload_slots(settings.max_concurrent_uploads)
    app.state.generation_slots = generation_slots(settings.max_concurrent_generations)

    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)
    app.add_exception_handler(sa_exc.OperationalError, _database_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(ControlCharacterGuard)
    app.state.metrics = ApiMetrics(app.state.session_factory)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Outermost of ours: every other layer's records carry the request's id.
    app.add_middleware(RequestLogMiddleware)
    for module in (health, files, uploads, jobs, estimates, exports, models, completions, web):
        app.include_router(module.router)
    app.include_router(webhooks.router)
    app.include_router(metrics.router)
    app.openapi = partial(openapi_document, app)  # type: ignore[method-assign]
    return app


def create_served_app(settings: Settings | None = None) -> FastAPI:
    """The app as `loraforge api` and `serve` run it: built, then its heap frozen for the GC.

    Everything alive once the app is built (modules, routes, schemas: hundreds of thousands
    of objects) lives as long as the process. Left to the cyclic garbage collector, each full
    collection would walk all of them: a pause of tens of milliseconds under load, enough to
    set the API's p99 latency. Frozen, they are never scanned; what requests allocate still is.
    Logging is configured here too: `loraforge api --workers N` builds the app in each process.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    return app
