"""Enqueue work by task name. The API never imports worker/ (nor torch): it only rings the bell.

The database is the source of truth; a lost message is re-published by the reaper, so a
failed enqueue is logged, not raised to the client.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from app.config import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

TASK_RUN_JOB = "training.run_job"
TASK_RUN_EXPORT = "exports.run_export"
TASK_DELIVER_WEBHOOK = "webhooks.deliver"


class Enqueuer(Protocol):
    def send(self, task_name: str, args: list[Any], queue: str) -> None: ...

    def waiting(self, queue: str) -> int:
        """Messages the broker holds in `queue`, not yet delivered to a worker."""
        ...


# After a failed publish, the next ones fail at once for this long instead of each waiting
# out the connect timeout and retries: the API publishes from one thread, and a queue of
# requests behind a dead broker would otherwise wait for every attempt before theirs.
BROKER_BACKOFF_S = 5.0


class BrokerUnavailable(ConnectionError):
    """A publish skipped: the last one failed less than BROKER_BACKOFF_S ago."""


class CeleryEnqueuer:
    """Publishes to the configured broker with a bounded retry, never waiting minutes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._failed_at = -BROKER_BACKOFF_S

    def _celery(self) -> Celery:
        if self._app is None:
            from celery import Celery

            self._app = Celery("loraforge-api", broker=self.settings.resolved_broker_url())
            self._app.conf.broker_connection_timeout = self.settings.enqueue_timeout_s
            self._app.conf.broker_connection_retry_on_startup = False
            if self.settings.resolved_broker_url().startswith(("redis://", "rediss://")):
                self._app.conf.broker_transport = "app.broker_transport:Transport"
        return self._app

    def send(self, task_name: str, args: list[Any], queue: str) -> None:
        retry_policy = {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        }
        since_failure = time.monotonic() - self._failed_at
        if since_failure < BROKER_BACKOFF_S:
            raise BrokerUnavailable(f"the broker failed {since_failure:.1f} s ago")
        try:
            self._celery().send_task(
                task_name, args=args, queue=queue, retry=True, retry_policy=retry_policy
            )
        except Exception:
            self._failed_at = time.monotonic()
            raise

    def waiting(self, queue: str) -> int:
        """Messages the broker holds in `queue`; 0 for a queue it does not know (a restarted
        Redis without persistence, or no publish yet). Raises when the broker is unreachable."""
        from kombu.exceptions import ChannelError

        with self._celery().connection_for_write() as connection, connection.channel() as channel:
            try:
                declared = channel.queue_declare(queue, passive=True)
            except ChannelError:  # the broker's "no such queue" (404)
                return 0
        count: int = declared.message_count
        return count


def try_send(enqueuer: Enqueuer, task_name: str, args: list[Any], queue: str) -> bool:
    """Send; on a broker failure log it and return False (the reaper publishes later)."""
    try:
        enqueuer.send(task_name, args, queue)
    except Exception:
        log.warning(
            "could not enqueue %s%s; the reaper will re-publish", task_name, args, exc_info=True
        )
        return False
    return True
