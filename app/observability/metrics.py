"""The API's Prometheus metrics: requests and their latency by route template and status,
and, read from the database at each scrape, jobs by status and the oldest queued job's age.

Each app has a registry of its own. With several API processes (`loraforge api --workers`),
set PROMETHEUS_MULTIPROC_DIR as prometheus-client documents: /metrics then sums them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.base import utcnow
from app.db.models import Job
from app.schemas.jobs import JobStatus

# Seconds; an upload or a download can take minutes, a cached key read a millisecond.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# The label of a request no route matched: each unknown path is not a series of its own.
UNMATCHED = "unmatched"


class JobCollector(Collector):
    """Jobs by status and the age of the oldest queued job, counted at each scrape."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
        jobs = GaugeMetricFamily("loraforge_jobs", "Fine-tuning jobs by status", labels=["status"])
        for status in get_args(JobStatus):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        age = 0.0
        if oldest is not None:
            created = oldest if oldest.tzinfo else oldest.replace(tzinfo=utcnow().tzinfo)
            age = max((utcnow() - created).total_seconds(), 0.0)
        yield GaugeMetricFamily(
            "loraforge_oldest_queued_job_age_seconds",
            "Seconds since the oldest queued job was created; 0 when none is queued",
            value=age,
        )


class ApiMetrics:
    """The registry /metrics renders, and the request metrics the middleware feeds."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
        self.requests = Counter(
            "loraforge_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "loraforge_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(JobCollector(factory))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route's template (`/v1/files/{file_id}`)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            labels = (scope["method"], route_template(scope), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED
