"""Per-key rate limiting: a token bucket for each API key, answered with 429 and Retry-After.

The buckets live in this process's memory: with several API processes (uvicorn --workers,
or replicas behind a load balancer) each enforces the limit on its own, so a key may reach
the limit times the number of processes. That bounds a runaway client; it is not billing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import RateLimited


@dataclass
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`per_minute` requests a minute per key, in bursts of up to as many; 0 turns it off."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}
        # Sync dependencies run in a thread pool: buckets are shared between threads.
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one token of `key_id`'s bucket, or raise RateLimited with Retry-After."""
        if self.capacity <= 0:
            return
        with self._lock:
            now = self.clock()
            bucket = self._buckets.setdefault(key_id, Bucket(self.capacity, now))
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait_s = (1 - bucket.tokens) / self.rate
        limit = int(self.capacity)
        raise RateLimited(
            f"rate limit reached: {limit} requests per minute per API key; "
            f"retry in {math.ceil(wait_s)}s",
            headers={
                "Retry-After": str(math.ceil(wait_s)),
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{wait_s:.3f}s",
            },
        )
