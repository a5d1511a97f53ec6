"""Graceful stops with real processes: SIGTERM to a worker mid-job checkpoints the job at the
next step, queues it again (no crash counted) and exits within LORAFORGE_STOP_GRACE_S; another
worker resumes it and the loss curve is the one an uninterrupted run draws."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db.models import Job, JobEvent
from app.db.session import make_engine, make_session_factory
from app.supervisor import SHUTDOWN_GRACE_S
from tests.e2e.stacks import (
    JOB_TIMEOUT_S,
    Stack,
    checkpoint_steps,
    create_job,
    embedded_stack,
    events,
    hello_dataset,
    job,
    metric_steps,
    postgres_redis_stack,
    upload,
    wait_status,
)
from tests.live import alive, wait_for

pytestmark = pytest.mark.slow

# Longer than the test runs on any CPU: each job is cancelled once it has trained far enough,
# so the test takes as long on a loaded machine as it must, not as the whole job would.
STEPS = 10**5
AFTER_STOP = 20  # steps compared past the stop
GRACE_S = 30


@pytest.fixture(params=["embedded", pytest.param("postgres-redis", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    settings = {"LORAFORGE_STOP_GRACE_S": str(GRACE_S)}
    if request.param == "embedded":
        with embedded_stack(tmp_path, settings) as running:
            yield running
    else:
        with postgres_redis_stack(tmp_path, workers=1, settings=settings) as running:
            yield running


def long_job(client: httpx.Client, training_file: str) -> str:
    """A job that a stop always lands in the middle of; no checkpoint of its own. A constant
    learning rate: its loss falls from the first steps (a warmup of 3% would be 3000 steps)."""
    created = create_job(
        client,
        training_file,
        max_steps=STEPS,
        checkpoint_every_steps=STEPS,
        lr_scheduler="constant",
        warmup_ratio=0,
    )
    job_id: str = created["id"]
    return job_id


def train_until(client: httpx.Client, job_id: str, step: int) -> list[tuple[int, float]]:
    """Let the job train to `step` or beyond, cancel it; its (step, loss) curve."""
    wait_for(
        lambda: max((s for s, _ in metric_steps(client, job_id)), default=0) >= step,
        JOB_TIMEOUT_S,
        f"job {job_id} to reach step {step}",
    )
    client.post(f"/fine_tuning/jobs/{job_id}/cancel")
    wait_status(client, job_id, "cancelled", timeout=60)
    return metric_steps(client, job_id)


def test_sigterm_hands_the_job_back_and_another_worker_resumes_its_loss_curve(stack: Stack):
    client = stack.client()
    training_file = upload(client, hello_dataset(40))
    stopped = long_job(client, training_file)
    wait_for(lambda: len(metric_steps(client, stopped)) >= 10, 180, "ten steps")

    _pid, exit_s = stack.terminate_worker(timeout=GRACE_S + 15)
    print(f"worker exited {exit_s:.2f} s after SIGTERM (grace {GRACE_S} s)")
    assert exit_s < GRACE_S
    # Right after the worker is gone, before its lease could expire: handed back, not lost.
    handed_back = job(client, stopped)
    if stack.serve_pid is None:  # (serve's supervisor starts a worker that may have it already)
        assert handed_back["status"] == "queued", handed_back
    (stop_step,) = checkpoint_steps(client, stopped)
    assert max(s for s, _ in metric_steps(client, stopped)) == stop_step >= 10
    messages = [e["message"] for e in events(client, stopped)]
    assert (
        f"Worker stopped at step {stop_step}; the job is queued again and will resume from "
        f"checkpoint step-{stop_step}"
    ) in messages

    if stack.serve_pid is None:
        stack.add_worker()
    compared = stop_step + AFTER_STOP
    resumed = train_until(client, stopped, compared)
    assert job(client, stopped)["attempt"] == 2
    messages = [e["message"] for e in events(client, stopped)]
    assert f"Attempt 2 resuming from checkpoint step-{stop_step}" in messages
    assert not [m for m in messages if "lease expired" in m or "lost" in m], messages
    # Checkpointed at the step it stopped after: no step is lost and none trained twice.
    assert [s for s, _ in resumed] == list(range(1, len(resumed) + 1))

    assert resumed[compared - 1][1] < resumed[0][1] - 0.3  # the curve says something
    straight = train_until(client, long_job(client, training_file), compared)
    assert [loss for _, loss in resumed[:compared]] == pytest.approx(
        [loss for _, loss in straight[:compared]], abs=1e-4
    )


def test_stopping_serve_hands_its_running_job_back_before_it_exits(tmp_path: Path):
    with embedded_stack(tmp_path, {"LORAFORGE_STOP_GRACE_S": str(GRACE_S)}) as stack:
        client = stack.client()
        stopped = long_job(client, upload(client, hello_dataset(40)))
        wait_for(lambda: len(metric_steps(client, stopped)) >= 10, 180, "ten steps")
        assert stack.serve_pid is not None
        started = time.monotonic()
        os.kill(stack.serve_pid, signal.SIGTERM)
        wait_for(lambda: not alive(stack.serve_pid or 0), GRACE_S + 30, "serve to exit")
        exit_s = time.monotonic() - started
    print(f"serve exited {exit_s:.2f} s after SIGTERM (grace {GRACE_S} s)")
    assert exit_s < SHUTDOWN_GRACE_S + GRACE_S
    engine = make_engine(f"sqlite:///{stack.data_dir / 'loraforge.db'}")
    with make_session_factory(engine)() as session:
        job_row = session.get_one(Job, stopped)
        assert (job_row.status, job_row.lease_owner, job_row.enqueued_at) == ("queued", None, None)
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == stopped))
        assert any(m.startswith("Worker stopped at step ") for m in messages)
    engine.dispose()
