"""Graceful stops for hour-long jobs: SIGTERM checkpoints the running job and hands it back.

Celery's warm shutdown (SIGTERM, or a first Ctrl-C) waits for the running task to end, and
with the solo pool that task is the whole job, running in the main thread: Celery reads its
own stop flag only between tasks. Its signal handler also sends `worker_shutting_down`, and
that is where the job learns of the stop: `GracefulStop` sets the worker's `stopping` event,
which the runner reads at every step boundary (checkpoint, back to `queued`, return), after
which Celery's shutdown goes on as usual. A watchdog bounds the whole stop: whatever is still
running `stop_grace_s` after the signal (a step longer than the grace, a hung upload) ends
with the process, the job keeps its lease until it expires, and a reaper re-queues it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# The exit status when the grace ran out before the job was handed back.
EXIT_GRACE_EXPIRED = 3


class GracefulStop:
    """Turns Celery's shutdown signal into `stopping`, and exits stop_grace_s after it."""

    def __init__(self, stopping: threading.Event, grace_s: float) -> None:
        self.stopping = stopping
        self.grace_s = grace_s
        self._watchdog = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)

    def install(self) -> None:
        """Listen for Celery's shutdown signal; arm the watchdog."""
        from celery.signals import worker_shutting_down

        worker_shutting_down.connect(self._on_shutting_down, weak=False)
        # Started now, not from the signal handler: the handler may interrupt the main thread
        # anywhere, even while it holds threading's own locks, so it only sets an event.
        self._watchdog.start()

    def _on_shutting_down(self, **_signal: Any) -> None:
        self.stopping.set()

    def _watch(self) -> None:
        self.stopping.wait()
        log.warning(
            "stop requested: a running job is checkpointed at its next step and queued "
            "again; exiting within %.0f s",
            self.grace_s,
        )
        # A daemon thread: a worker that finishes its stop in time exits during this sleep.
        time.sleep(self.grace_s)
        log.error(
            "still running %.0f s after the stop request: exiting now; a job not handed back "
            "is re-queued by a reaper once its lease expires",
            self.grace_s,
        )
        os._exit(EXIT_GRACE_EXPIRED)
