"""`loraforge serve`: the whole service on one machine.

Migrations, a first API key, the API in this process, and Celery worker subprocesses and an
inference server subprocess (chat and completions, on loopback) that are restarted when they
die. SQLite and the SQLite broker in the data dir by default: no Redis, no Postgres. Ctrl-C
(or SIGTERM) stops the API, then the workers. The workers' memory is measured once at start
and given to the API too, which then refuses the jobs they could not hold.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from app.config import Settings
from app.db.migrate import upgrade_head
from app.db.models import ApiKey
from app.db.session import make_engine, make_session_factory, session_scope
from app.observability.logs import configure_logging
from app.services.keys import create_key, get_or_create_organization

log = logging.getLogger("loraforge.serve")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
# The memory probe imports torch (seconds) and may initialize CUDA.
MEMORY_PROBE_TIMEOUT_S = 120.0
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


def embedded_worker_memory(settings: Settings) -> int | None:
    """What this machine's workers can hold: the setting, or what a worker process detects
    (the GPU's memory, or the RAM available now); None when it cannot tell."""
    if settings.worker_memory_bytes is not None:
        return settings.worker_memory_bytes
    # A subprocess: this process is the API, which never imports torch.
    command = [sys.executable, "-m", "worker.device_memory"]
    try:
        ran = subprocess.run(
            command, capture_output=True, text=True, timeout=MEMORY_PROBE_TIMEOUT_S, check=True
        )
        printed = ran.stdout.split()[-1:]  # the number is the last thing printed
        return int(printed[0]) if printed else None
    except (OSError, subprocess.SubprocessError, ValueError):
        log.warning("could not measure the workers' memory; jobs are not refused by size")
        return None


def announce_first_key(key: str, log_format: str) -> None:
    """The first key, on stdout: two lines for a person, or one log record among the JSON."""
    told = "First start: created an API key for organization 'default' (shown once):"
    if log_format == "json":
        log.warning("%s LORAFORGE_API_KEY=%s", told, key)
    else:
        print(f"{told}\nLORAFORGE_API_KEY={key}", flush=True)


WORKER_COMMAND = ("worker",)


class WorkerSupervisor:
    """Keeps `count` processes of a `loraforge` command running (workers by default);
    restarts one that exits, with backoff."""

    def __init__(
        self,
        count: int,
        env: dict[str, str],
        stop_grace_s: float,
        command: tuple[str, ...] = WORKER_COMMAND,
    ) -> None:
        self.count = count
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.command = command
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", *self.command], env=self.env)
        log.info("started %s pid %d", self.command[0], process.pid)
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
                    "%s pid %d exited with %s; restarting in %.0fs",
                    self.command[0],
                    process.pid,
                    code,
                    delay,
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


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def serve(
    settings: Settings, host: str, port: int, workers: int, *, inference: bool = True
) -> None:
    """Run API, workers and (unless told not to) an inference server until interrupted."""
    import uvicorn

    from app.api.server_options import HTTP_OPTIONS
    from app.main import create_served_app

    log_format = configure_logging(settings.log_format, settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(1) as probe:  # measured while the migrations run
        worker_memory = probe.submit(embedded_worker_memory, settings)
        upgrade_head(settings.resolved_database_url())
        key = first_key(settings)
        settings = settings.model_copy(update={"worker_memory_bytes": worker_memory.result()})
    if key is not None:
        announce_first_key(key, log_format)
    env = {
        **os.environ,
        "LORAFORGE_DATA_DIR": str(settings.data_dir.resolve()),
        "LORAFORGE_DATABASE_URL": settings.resolved_database_url(),
        "LORAFORGE_BROKER_URL": settings.resolved_broker_url(),
    }
    if settings.worker_memory_bytes is not None:
        env["LORAFORGE_WORKER_MEMORY_BYTES"] = str(settings.worker_memory_bytes)
    supervisors = [WorkerSupervisor(workers, env, settings.stop_grace_s)]
    if inference and not settings.inference_url:
        # On loopback only: the API is the inference server's one client.
        inference_port = free_port("127.0.0.1")
        command = ("inference", "--host", "127.0.0.1", "--port", str(inference_port))
        supervisors.append(WorkerSupervisor(1, env, settings.stop_grace_s, command))
        settings = settings.model_copy(
            update={"inference_url": f"http://127.0.0.1:{inference_port}"}
        )
    for supervisor in supervisors:
        supervisor.start()
    try:
        config = uvicorn.Config(
            create_served_app(settings),
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
        for supervisor in supervisors:
            supervisor.stop()
    log.info("stopped")
