"""GracefulStop in a real Celery worker process (solo pool, SQLite broker): SIGTERM reaches
the running task, and the grace bounds the stop when the task never reaches a step boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from celery import Celery

from tests.live import wait_for
from worker.shutdown import EXIT_GRACE_EXPIRED

GRACE_S = 3.0

# A worker whose one task runs "steps" of `step_s` seconds and checks the stop between them.
WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path

    from celery import Celery

    from worker.shutdown import GracefulStop

    broker, started, grace, step_s = sys.argv[1], Path(sys.argv[2]), *map(float, sys.argv[3:])
    stopping = threading.Event()
    app = Celery("steps", broker=broker)
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


    @app.task(name="steps.run")
    def run():
        started.write_text("running")
        while not stopping.is_set():
            time.sleep(step_s)
        started.write_text("stopped at a step boundary")


    GracefulStop(stopping, grace).install()
    app.worker_main(
        ["worker", "--pool", "solo", "--queues", "steps", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    )
    """
)


def stop_mid_task(tmp_path: Path, step_s: float) -> tuple[int, float, str]:
    """Start the worker, run its task, SIGTERM it: (exit status, seconds to exit, task's note)."""
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    script, started = tmp_path / "steps_worker.py", tmp_path / "started"
    script.write_text(WORKER_SCRIPT)
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(script), broker, str(started), str(GRACE_S), str(step_s)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        Celery(broker=broker).send_task("steps.run", queue="steps")
        wait_for(started.exists, 60, "the task to start")
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(GRACE_S + 30)
        return status, time.monotonic() - sent, started.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.slow
def test_sigterm_reaches_the_running_task_and_the_worker_exits_after_it(tmp_path: Path):
    status, seconds, note = stop_mid_task(tmp_path, step_s=0.1)
    assert note == "stopped at a step boundary"
    assert status == 0
    assert seconds < GRACE_S


@pytest.mark.slow
def test_a_task_that_reaches_no_step_boundary_is_ended_when_the_grace_runs_out(tmp_path: Path):
    status, seconds, note = stop_mid_task(tmp_path, step_s=600)
    assert note == "running"
    assert status == EXIT_GRACE_EXPIRED
    assert GRACE_S <= seconds < GRACE_S + 5
    assert "still running 3 s after the stop request" in (tmp_path / "worker.log").read_text()
