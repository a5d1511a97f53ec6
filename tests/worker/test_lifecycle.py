"""Claims, leases, fenced finishes and the reaper, against a real database of each kind."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import new_id, utcnow
from app.db.migrate import upgrade_head
from app.db.models import Job, JobEvent
from app.db.session import make_engine, make_session_factory
from app.services.keys import get_or_create_organization
from worker.lifecycle import claim, extend_lease, finish
from worker.reaper import reap_once


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class Published:
    """Records what is published; holds `held` messages per queue (none unless told)."""

    sent: list[tuple[str, list[Any], str]] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)

    def send(self, task_name: str, args: list[Any], queue: str) -> None:
        self.sent.append((task_name, args, queue))

    def waiting(self, queue: str) -> int:
        return self.held.get(queue, 0)


@pytest.fixture
def lifecycle_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url="memory://",
        lease_seconds=30,
        max_attempts=2,
        requeue_after_s=60,
        _env_file=None,
    )  # type: ignore[call-arg]


@pytest.fixture
def factory(lifecycle_settings: Settings) -> sessionmaker[Session]:
    upgrade_head(lifecycle_settings.resolved_database_url())
    engine = make_engine(lifecycle_settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


def queued_job(factory: sessionmaker[Session], **values: Any) -> str:
    with factory() as session:
        organization = get_or_create_organization(session, "acme")
        job = Job(
            id=new_id("ftjob"),
            organization_id=organization.id,
            model="m",
            training_file_id="file-x",
            seed=1,
            spec={},
            status="queued",
            result_files=[],
            attempt=0,
            **{"queue": "training", **values},
        )
        session.add(job)
        session.commit()
        return job.id


def test_only_one_of_two_claims_wins(factory: sessionmaker[Session]):
    job_id = queued_job(factory)
    with factory() as first, factory() as second:
        won = claim(first, job_id, "worker-a", 30)
        lost = claim(second, job_id, "worker-b", 30)
    assert won is not None and won.attempt == 1 and won.owner == "worker-a"
    assert lost is None


def test_a_stale_attempt_cannot_extend_or_finish(factory: sessionmaker[Session]):
    job_id = queued_job(factory)
    with factory() as session:
        first = claim(session, job_id, "worker-a", 30)
        assert first is not None
        # The reaper gave the job to another attempt.
        job = session.get_one(Job, job_id)
        job.status, job.attempt, job.lease_owner = "running", 2, "worker-b"
        session.commit()
        assert not extend_lease(session, first, 30)
        assert not finish(session, first, "succeeded")
        session.commit()
        assert session.get_one(Job, job_id).status == "running"


def test_reaper_requeues_an_expired_lease_and_publishes_it(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    job_id = queued_job(factory)
    with factory() as session:
        assert claim(session, job_id, "worker-a", lease_seconds=-1) is not None
    published = Published()
    reap_once(factory, lifecycle_settings, published)
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.lease_owner, job.attempt) == ("queued", None, 1)
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert any("lease expired" in m for m in messages)
    assert published.sent == [("training.run_job", [job_id], "training")]


def test_reaper_fails_a_job_after_max_attempts(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    job_id = queued_job(factory, enqueued_at=utcnow())
    for _ in range(lifecycle_settings.max_attempts):
        with factory() as session:
            assert claim(session, job_id, "worker", lease_seconds=-1) is not None
        reap_once(factory, lifecycle_settings, Published())
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert job.status == "failed"
        assert job.error is not None and job.error["code"] == "max_attempts_exceeded"


def test_reaper_republishes_only_stale_unclaimed_jobs(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    never_sent = queued_job(factory)
    fresh = queued_job(factory, enqueued_at=utcnow())
    stale = queued_job(factory, enqueued_at=utcnow() - timedelta(seconds=600))
    published = Published()
    reap_once(factory, lifecycle_settings, published)
    assert sorted(args[0] for _, args, _ in published.sent) == sorted([never_sent, stale])
    assert fresh not in [args[0] for _, args, _ in published.sent]


def test_reaper_republishes_only_as_many_jobs_as_the_broker_lost_oldest_first(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    long_ago = utcnow() - timedelta(seconds=600)
    oldest = queued_job(factory, enqueued_at=long_ago - timedelta(seconds=60))
    queued_job(factory, enqueued_at=long_ago)
    queued_job(factory, enqueued_at=long_ago, queue="gpu-80g")
    published = Published(held={"training": 1, "gpu-80g": 1})
    reap_once(factory, lifecycle_settings, published)
    assert published.sent == [("training.run_job", [oldest], "training")]


def tiny_model_job(
    factory: sessionmaker[Session], batch_size: int | str = "auto", **training: Any
) -> str:
    """A queued job on the built-in model, published once already (enqueued_at set)."""
    from app.schemas.spec import (
        Hyperparameters,
        LoraSpec,
        QuantizationSpec,
        TrainingSpec,
        resolve_spec,
    )

    spec = resolve_spec(
        model="loraforge/tiny-random-llama",
        seed=1,
        n_train_examples=20,
        hyperparameters=Hyperparameters(batch_size=batch_size),
        lora=LoraSpec(),
        quantization=QuantizationSpec(),
        training=TrainingSpec(**training),
    )
    job_id = queued_job(factory, enqueued_at=utcnow())
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.model, job.spec = spec.model, spec.model_dump(mode="json")
        session.commit()
    return job_id


def runs_on(settings: Settings, factory: sessionmaker[Session], job_id: str) -> str | None:
    """What a worker with these settings does with the job's message."""
    from app.storage import build_storage
    from worker.context import WorkerContext
    from worker.runner import JobRunner

    context = WorkerContext(settings, factory, build_storage(settings), "a-worker")
    return JobRunner(context, job_id).run()


def assert_left_queued_for_another_worker(factory: sessionmaker[Session], job_id: str) -> None:
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt, job.enqueued_at) == ("queued", 0, None)


def test_a_worker_too_small_for_a_job_leaves_it_queued_for_a_larger_one(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    job_id = tiny_model_job(factory)
    small = lifecycle_settings.model_copy(update={"worker_memory_bytes": 1 << 20})
    assert runs_on(small, factory, job_id) is None
    assert_left_queued_for_another_worker(factory, job_id)
    published = Published()
    reap_once(factory, lifecycle_settings, published)
    assert published.sent == [("training.run_job", [job_id], "training")]


def test_worker_memory_from_the_environment_leaves_a_larger_job_queued(
    factory: sessionmaker[Session],
    lifecycle_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("LORAFORGE_WORKER_MEMORY_BYTES", str(1 << 20))
    from_environment = Settings(
        data_dir=lifecycle_settings.data_dir,
        database_url=lifecycle_settings.database_url,
        broker_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )
    assert from_environment.worker_memory_bytes == 1 << 20
    job_id = tiny_model_job(factory)
    assert runs_on(from_environment, factory, job_id) is None
    assert_left_queued_for_another_worker(factory, job_id)


@pytest.mark.skipif(torch_cuda_available(), reason="a GPU worker measures its GPU instead")
def test_a_cpu_worker_measures_the_ram_available_to_it(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    from app.storage import build_storage
    from worker.context import WorkerContext

    assert lifecycle_settings.worker_memory_bytes is None
    context = WorkerContext(
        lifecycle_settings, factory, build_storage(lifecycle_settings), "cpu-worker"
    )
    installed = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert context.device_memory_bytes is not None
    assert 0 < context.device_memory_bytes <= installed


@pytest.mark.skipif(torch_cuda_available(), reason="a GPU worker measures its GPU instead")
def test_a_cpu_worker_leaves_a_job_larger_than_its_ram_queued(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    # About 770 GiB of activations and logits: more than this machine's RAM.
    job_id = tiny_model_job(
        factory, batch_size=256, max_seq_length=131_072, gradient_checkpointing=False
    )
    assert runs_on(lifecycle_settings, factory, job_id) is None
    assert_left_queued_for_another_worker(factory, job_id)


def pause_and_resume(factory: sessionmaker[Session], settings: Settings, job_id: str) -> None:
    """One claim that ends in a pause, then the user's resume: the API's own path."""
    from app.services.jobs import get_job, resume_job

    with factory() as session:
        attempt = claim(session, job_id, "worker", 30)
        assert attempt is not None
        assert finish(session, attempt, "paused", pause_requested=False)
        session.commit()
        job = session.get_one(Job, job_id)
        resume_job(session, settings, Published(), get_job(session, job.organization_id, job_id))


def test_pauses_and_resumes_do_not_spend_the_lost_worker_budget(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    settings = lifecycle_settings.model_copy(update={"max_attempts": 3})
    job_id = queued_job(factory, enqueued_at=utcnow())
    for _ in range(2):
        pause_and_resume(factory, settings, job_id)
    with factory() as session:
        third = claim(session, job_id, "worker", lease_seconds=-1)  # then killed
        assert third is not None and third.attempt == 3
    reap_once(factory, settings, Published())
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt, job.lost_workers, job.error) == ("queued", 3, 1, None)
        assert claim(session, job_id, "worker", 30) is not None  # and it runs again


def test_a_job_handed_back_by_its_worker_does_not_count_as_lost(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    job_id = queued_job(factory, enqueued_at=utcnow())
    with factory() as session:
        stopping = claim(session, job_id, "worker", 30)
        assert stopping is not None
        # A worker told to stop releases its job for another one.
        assert finish(session, stopping, "queued")
        session.commit()
    with factory() as session:
        assert claim(session, job_id, "worker", lease_seconds=-1) is not None
    reap_once(factory, lifecycle_settings, Published())
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt, job.lost_workers) == ("queued", 2, 1)


def test_the_lost_worker_budget_fails_a_job_at_max_attempts_losses(
    factory: sessionmaker[Session], lifecycle_settings: Settings
):
    settings = lifecycle_settings.model_copy(update={"max_attempts": 3})
    job_id = queued_job(factory, enqueued_at=utcnow())
    pause_and_resume(factory, settings, job_id)
    statuses = []
    for _ in range(settings.max_attempts):
        with factory() as session:
            assert claim(session, job_id, "worker", lease_seconds=-1) is not None
        reap_once(factory, settings, Published())
        with factory() as session:
            statuses.append(session.get_one(Job, job_id).status)
    assert statuses == ["queued", "queued", "failed"]
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.attempt, job.lost_workers) == (4, 3)
        assert job.error == {
            "code": "max_attempts_exceeded",
            "param": None,
            "message": "the worker running the job was lost 3 times; giving up",
        }
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert job.error["message"] in list(messages)
