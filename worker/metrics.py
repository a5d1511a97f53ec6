"""A worker's Prometheus metrics, served on LORAFORGE_WORKER_METRICS_PORT (0: off): training
step time, tokens per second, device memory, attempt durations by outcome, reaper actions
and webhook attempts. One registry per process (a worker runs one job at a time)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
STEP_SECONDS = Histogram(
    "loraforge_worker_step_seconds",
    "Seconds per optimizer step (time between two step reports)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
STEPS = Counter("loraforge_worker_steps", "Optimizer steps trained", registry=REGISTRY)
TOKENS_PER_SECOND = Gauge(
    "loraforge_worker_tokens_per_second",
    "Trained tokens per second of the running job (its last report)",
    registry=REGISTRY,
)
DEVICE_MEMORY = Gauge(
    "loraforge_worker_device_peak_memory_bytes",
    "Peak memory of the job's device: CUDA allocations on a GPU, the process's RSS on a CPU",
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "loraforge_worker_job_attempt_seconds",
    "Seconds one attempt of a job ran, by the status it ended in",
    ["status"],
    buckets=(1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
REAPER_ACTIONS = Counter(
    "loraforge_worker_reaper_actions",
    "Jobs the reaper re-queued after a lost lease, or published again",
    ["action"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "loraforge_worker_webhook_attempts",
    "Webhook delivery attempts, by outcome (succeeded: a 2xx answer)",
    ["outcome"],
    registry=REGISTRY,
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> bool:
    """Serve REGISTRY on `port`; False (logged) when the port is taken."""
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        log.warning("worker metrics not served on port %d: %s", port, exc)
        return False
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return True


class StepTimer:
    """Feeds the step metrics from the engine's per-step reports."""

    def __init__(self) -> None:
        self.last: float | None = None

    def observe(self, tokens_per_second: float, peak_memory_bytes: int | None) -> None:
        now = time.monotonic()
        if self.last is not None:
            STEP_SECONDS.observe(now - self.last)
        self.last = now
        STEPS.inc()
        TOKENS_PER_SECOND.set(tokens_per_second)
        if peak_memory_bytes is not None:
            DEVICE_MEMORY.set(peak_memory_bytes)


@dataclass
class TimedAttempt:
    status: str = "lost"  # what an attempt that ends by an exception counts as


@contextmanager
def attempt_timer() -> Iterator[TimedAttempt]:
    """Times one attempt of a job; the caller sets the status it ended in."""
    started = time.monotonic()
    timed = TimedAttempt()
    try:
        yield timed
    finally:
        ATTEMPT_SECONDS.labels(timed.status).observe(time.monotonic() - started)
