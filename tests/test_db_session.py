"""Pooled PostgreSQL connections: pinged only after sitting idle, and autocommit read sessions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import session as db_session
from tests.databases import POSTGRES_ADMIN_URL, postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    with postgres_database() as url:
        engine = db_session.make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("select pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_a_connection_in_steady_use_is_not_pinged(engine: Engine, pings: list[Any]) -> None:
    first = backend_pid(engine)
    assert [backend_pid(engine) for _ in range(5)] == [first] * 5
    assert pings == []


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    engine: Engine, pings: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped = backend_pid(engine)
    terminate(dropped)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # as if it had sat idle
    assert backend_pid(engine) != dropped  # no error reaches the caller
    assert len(pings) >= 1


def state_after_a_select(factory: sessionmaker[Session]) -> tuple[bool, Any]:
    """(autocommit, transaction status) of the session's connection after one SELECT."""
    with factory() as session:
        session.execute(text("select 1"))
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi is not None
        return dbapi.autocommit, dbapi.info.transaction_status


def test_a_read_session_autocommits_and_leaves_the_pool_as_it_found_it(engine: Engine) -> None:
    status = psycopg.pq.TransactionStatus
    reads = db_session.make_read_session_factory(engine)
    assert state_after_a_select(reads) == (True, status.IDLE)
    # The same pooled connection, back in its default mode for a writing session.
    writes = db_session.make_session_factory(engine)
    assert state_after_a_select(writes) == (False, status.INTRANS)
