"""`loraforge serve`: the whole service on one machine.

Migrations, a first API key, the API in this process and Celery worker subprocesses that
are restarted when they die. SQLite and the SQLite broker in the data dir by default: no
Redis, no Postgres. Ctrl-C (or SIGTERM) stops the API, then the workers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from sqlalchemy import func, select

from app.config import Settings
from app.db.migrate import upgrade_head
from app.db.models import ApiKey
from app.db.session import make_engine, make_session_factory, session_scope
from app.services.keys import create_key, get_or_create_organization

log = logging.getLogger("loraforge.serve")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
# A worker bounds its own stop by stop_grace_s; the SIGKILL after this much more is a backstop.
KILL_MARGIN_S = 5.0
# Open event streams end on shutdown after this long instead of holding the process.
SHUTDOWN_GRACE_S = 5


def first_key(settings: Settings) -> str | None:
    """Create an organization "default" and a key when the database has no key at all."""
    factory = make_session_factory(make_engine(settings.resolved_database_url()))
    with session_scope(factory) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        return create_key(session, get_or_create_organization(session, "default"), "first").key


class WorkerSupervisor:
    """Keeps `count` worker processes running; restarts one that exits, with backoff."""

    def __init__(self, count: int, env: dict[str, str], stop_grace_s: float) -> None:
        self.count = count
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=self.env)
        log.info("started worker pid %d", process.pid)
        return process

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code is None or self._stopping.is_set():
                    continue
                delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
                log.warning(
                    "worker pid %d exited with %s; restarting in %.0fs", process.pid, code, delay
                )
                self.restarts += 1
                if self._stopping.wait(delay):
                    return
                self.processes[index] = self._spawn()

    def stop(self) -> None:
        """SIGTERM every worker, then SIGKILL what is left after the grace period.

        On SIGTERM a worker checkpoints its job at the next step and queues it again, so the
        next start resumes it from there; one killed here keeps its lease until it expires,
        and the job resumes from its newest checkpoint after that.
        """
        self._stopping.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + self.stop_grace_s + KILL_MARGIN_S
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run API and workers until interrupted."""
    import uvicorn

    from app.api.server_options import HTTP_OPTIONS

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_head(settings.resolved_database_url())
    key = first_key(settings)
    if key is not None:
        print(
            f"First start: created an API key for organization 'default' (shown once):\n"
            f"LORAFORGE_API_KEY={key}",
            flush=True,
        )
    env = {
        **os.environ,
        "LORAFORGE_DATA_DIR": str(settings.data_dir.resolve()),
        "LORAFORGE_DATABASE_URL": settings.resolved_database_url(),
        "LORAFORGE_BROKER_URL": settings.resolved_broker_url(),
    }
    supervisor = WorkerSupervisor(workers, env, settings.stop_grace_s)
    supervisor.start()
    try:
        config = uvicorn.Config(
            "app.main:create_served_app",
            factory=True,
            host=host,
            port=port,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            **HTTP_OPTIONS,
        )
        # uvicorn re-raises the signal that stopped it once it has shut down; with the default
        # SIGTERM action that would kill this process before the workers are stopped.
        signal.signal(signal.SIGTERM, _interrupt)
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: stopping is the asked-for outcome
    finally:
        supervisor.stop()
    log.info("stopped")
