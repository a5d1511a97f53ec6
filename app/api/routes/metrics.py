"""GET /metrics: Prometheus' text format, for a scraper on the operator's network."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from app.observability.metrics import ApiMetrics

router = APIRouter(tags=["health"], include_in_schema=False)


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    """Request counts and latencies, jobs by status, the oldest queued job's age."""
    metrics: ApiMetrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)  # the job counts are a database read
    return Response(body, media_type=CONTENT_TYPE_LATEST)
