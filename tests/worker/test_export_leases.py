"""Exports are leased as jobs are: one claim wins, a heartbeat holds the lease, a stale attempt
writes nothing, and the reaper queues (or fails) an export whose worker was lost and
publishes one nobody claimed. Against a real database of each kind."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.catalog import TINY_RANDOM_LLAMA
from app.config import Settings
from app.db.base import utcnow
from app.db.migrate import upgrade_head
from app.db.models import Export, Job
from app.db.session import make_engine, make_session_factory
from app.storage import build_storage
from tests.factories import add_export
from tests.worker.test_lifecycle import Published, queued_job
from worker.context import WorkerContext
from worker.exports import run_export
from worker.lifecycle import Heartbeat, claim, extend_lease, finish
from worker.reaper import reap_once


@pytest.fixture
def export_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url="memory://",
        lease_seconds=30,
        heartbeat_seconds=0.2,
        max_attempts=2,
        requeue_after_s=60,
        _env_file=None,
    )  # type: ignore[call-arg]


@pytest.fixture
def factory(export_settings: Settings) -> sessionmaker[Session]:
    upgrade_head(export_settings.resolved_database_url())
    engine = make_engine(export_settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


def queued_export(factory: sessionmaker[Session], **fields: Any) -> str:
    """A queued export of a succeeded job of the tiny model (which has no adapter stored)."""
    job_id = queued_job(factory)
    with factory() as session:
        job = session.get_one(Job, job_id)
        job.status, job.model = "succeeded", TINY_RANDOM_LLAMA
        export = add_export(session, job, status="queued", **fields)
        session.commit()
        return export.id


def read(factory: sessionmaker[Session], export_id: str) -> Export:
    with factory() as session:
        return session.get_one(Export, export_id)


def test_only_one_of_two_export_claims_wins(factory: sessionmaker[Session]):
    export_id = queued_export(factory)
    with factory() as first, factory() as second:
        won = claim(first, export_id, "worker-a", 30, table=Export)
        lost = claim(second, export_id, "worker-b", 30, table=Export)
    assert won is not None and (won.attempt, won.owner, won.table) == (1, "worker-a", Export)
    assert lost is None
    export = read(factory, export_id)
    assert (export.status, export.lease_owner) == ("running", "worker-a")
    assert export.lease_expires_at is not None and export.started_at is not None


def test_a_heartbeat_holds_an_exports_lease_until_another_attempt_takes_it(
    factory: sessionmaker[Session],
):
    export_id = queued_export(factory)
    with factory() as session:
        held = claim(session, export_id, "worker-a", lease_seconds=1, table=Export)
    assert held is not None
    first_expiry = read(factory, export_id).lease_expires_at
    with Heartbeat(factory, held, lease_seconds=1, interval_seconds=0.1) as heartbeat:
        time.sleep(1.5)
        assert not heartbeat.lost.is_set()
        renewed = read(factory, export_id).lease_expires_at
        assert renewed is not None and first_expiry is not None and renewed > first_expiry
        with factory() as session:  # the reaper gave the export to another attempt
            export = session.get_one(Export, export_id)
            export.attempt, export.lease_owner = 2, "worker-b"
            session.commit()
        assert heartbeat.lost.wait(5)
    with factory() as session:
        assert not extend_lease(session, held, 30)
        assert not finish(session, held, "succeeded")
        session.commit()
    export = read(factory, export_id)
    assert (export.status, export.attempt, export.lease_owner) == ("running", 2, "worker-b")


def test_reaper_requeues_an_export_whose_worker_was_lost_and_publishes_it(
    factory: sessionmaker[Session], export_settings: Settings
):
    export_id = queued_export(factory, enqueued_at=utcnow())
    with factory() as session:
        assert claim(session, export_id, "worker-a", lease_seconds=-1, table=Export)
    published = Published()
    reap_once(factory, export_settings, published)
    export = read(factory, export_id)
    assert (export.status, export.lease_owner, export.lease_expires_at) == ("queued", None, None)
    assert (export.attempt, export.lost_workers) == (1, 1)
    assert export.enqueued_at is not None  # published by the same pass
    assert published.sent == [("exports.run_export", [export_id], "exports")]
    with factory() as session:
        again = claim(session, export_id, "worker-b", 30, table=Export)
    assert again is not None and again.attempt == 2


def test_reaper_fails_an_export_after_max_attempts_lost_workers(
    factory: sessionmaker[Session], export_settings: Settings
):
    export_id = queued_export(factory, enqueued_at=utcnow())
    for _ in range(export_settings.max_attempts):
        with factory() as session:
            assert claim(session, export_id, "worker", lease_seconds=-1, table=Export)
        reap_once(factory, export_settings, Published())
    export = read(factory, export_id)
    assert (export.status, export.lost_workers, export.lease_owner) == ("failed", 2, None)
    assert export.finished_at is not None
    assert export.error == {
        "code": "max_attempts_exceeded",
        "param": None,
        "message": "the worker running the export was lost 2 times; giving up",
    }


def test_reaper_leaves_a_live_exports_lease_alone(
    factory: sessionmaker[Session], export_settings: Settings
):
    export_id = queued_export(factory, enqueued_at=utcnow())
    with factory() as session:
        assert claim(session, export_id, "worker-a", lease_seconds=30, table=Export)
    published = Published()
    reap_once(factory, export_settings, published)
    export = read(factory, export_id)
    assert (export.status, export.lease_owner, export.lost_workers) == ("running", "worker-a", 0)
    assert published.sent == []


def test_reaper_republishes_only_stale_unclaimed_exports(
    factory: sessionmaker[Session], export_settings: Settings
):
    never_sent = queued_export(factory)
    fresh = queued_export(factory, enqueued_at=utcnow())
    stale = queued_export(factory, enqueued_at=utcnow() - timedelta(seconds=600))
    published = Published()
    reap_once(factory, export_settings, published)
    assert sorted(args[0] for _, args, _ in published.sent) == sorted([never_sent, stale])
    assert {queue for _, _, queue in published.sent} == {export_settings.export_queue}
    assert fresh not in [args[0] for _, args, _ in published.sent]
    assert read(factory, never_sent).enqueued_at is not None


def test_a_duplicate_export_message_finds_it_claimed_and_writes_nothing(
    factory: sessionmaker[Session], export_settings: Settings
):
    export_id = queued_export(factory)
    with factory() as session:
        assert claim(session, export_id, "worker-a", 30, table=Export)
    context = WorkerContext(export_settings, factory, build_storage(export_settings), "worker-b")
    assert run_export(context, export_id) is None
    export = read(factory, export_id)
    assert (export.status, export.attempt, export.lease_owner) == ("running", 1, "worker-a")


def test_an_export_that_cannot_be_built_fails_and_releases_its_lease(
    factory: sessionmaker[Session], export_settings: Settings
):
    export_id = queued_export(factory)
    context = WorkerContext(export_settings, factory, build_storage(export_settings), "worker-a")
    assert run_export(context, export_id) == "failed"
    export = read(factory, export_id)
    assert (export.status, export.attempt, export.lease_owner) == ("failed", 1, None)
    assert export.error is not None and export.error["code"] == "internal_error"
