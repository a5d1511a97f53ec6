"""compare_and_set: one statement per shape of change, built once and bound per call; the same
answers whichever job, values and repeats."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import Job
from app.services.transitions import compare_and_set
from tests.conftest import create_job
from tests.factories import Tenant


def new_job(client: TestClient, tenant: Tenant, training_file: str) -> str:
    return str(create_job(client, tenant, training_file).json()["id"])


def test_a_change_binds_its_own_job_values_and_conditions_each_time(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    first, second = (new_job(client, tenant_a, training_file) for _ in range(2))
    expires = utcnow() + timedelta(minutes=2)
    with session_factory() as session:
        for job_id, owner in ((first, "worker-1"), (second, "worker-2")):
            claimed = compare_and_set(
                session,
                job_id,
                from_statuses={"queued"},
                to_status="running",
                where={"lease_owner": None},  # IS NULL, not "= NULL"
                lease_owner=owner,
                lease_expires_at=expires,
            )
            assert claimed
        session.commit()
        # The same shape again: the condition now binds a value that no longer matches.
        assert not compare_and_set(
            session, first, from_statuses={"running"}, where={"lease_owner": "worker-2"}, attempt=5
        )
        assert compare_and_set(
            session, first, from_statuses={"running"}, where={"lease_owner": "worker-1"}, attempt=5
        )
        assert not compare_and_set(session, second, from_statuses={"queued"}, attempt=7)
        session.commit()
    with session_factory() as session:
        one, two = session.get_one(Job, first), session.get_one(Job, second)
        assert (one.status, one.lease_owner, one.attempt) == ("running", "worker-1", 5)
        assert (two.status, two.lease_owner, two.attempt) == ("running", "worker-2", 0)
        assert one.lease_expires_at == expires  # through the column's own type, as a bind


def test_a_value_computed_in_sql_and_a_cleared_value_are_written(
    client: TestClient,
    tenant_a: Tenant,
    training_file: str,
    session_factory: sessionmaker[Session],
):
    job_id = new_job(client, tenant_a, training_file)
    with session_factory() as session:
        assert compare_and_set(
            session, job_id, from_statuses={"queued"}, attempt=Job.attempt + 1, enqueued_at=None
        )
        assert compare_and_set(session, job_id, from_statuses={"queued"}, attempt=Job.attempt + 1)
        session.commit()
    with session_factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.attempt, job.enqueued_at) == (2, None)


def test_an_illegal_transition_is_refused_before_any_sql(session_factory: sessionmaker[Session]):
    with session_factory() as session, pytest.raises(ValueError, match="illegal transition"):
        compare_and_set(session, "ftjob-x", from_statuses={"succeeded"}, to_status="running")
