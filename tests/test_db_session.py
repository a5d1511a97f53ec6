"""Pooled PostgreSQL connections, on the writing engine and on the API's asynchronous
engine: pinged only after sitting idle, replaced when the server dropped them; reads
autocommit, writes on the asynchronous engine run in a transaction, on the same pool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import session as db_session
from tests.databases import POSTGRES_ADMIN_URL, postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def terminate(pid: int) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


class WritingEngine:
    def __init__(self, url: str) -> None:
        self.engine = db_session.make_engine(url)
        self.sync_engine = self.engine

    def backend_pid(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text("select pg_backend_pid()")).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()


class ReadEngine:
    """The read engine, driven from one event loop for the whole test."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = db_session.make_async_engine(url)
        self.sync_engine = self.engine.sync_engine
        self.loop = asyncio.new_event_loop()

    async def _backend_pid(self) -> int:
        async with self.engine.connect() as connection:
            return int((await connection.execute(text("select pg_backend_pid()"))).scalar_one())

    def backend_pid(self) -> int:
        return self.loop.run_until_complete(self._backend_pid())

    def dispose(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture(params=[WritingEngine, ReadEngine], ids=["writing", "read"])
def engine(request: pytest.FixtureRequest, database_url: str) -> Iterator[Any]:
    wrapped = request.param(database_url)
    yield wrapped
    wrapped.dispose()


def test_a_connection_in_steady_use_is_not_pinged(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(engine.sync_engine, monkeypatch)
    first = engine.backend_pid()
    assert [engine.backend_pid() for _ in range(5)] == [first] * 5
    assert pings == []


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(engine.sync_engine, monkeypatch)
    dropped = engine.backend_pid()
    terminate(dropped)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # as if it had sat idle
    assert engine.backend_pid() != dropped  # no error reaches the caller
    assert len(pings) >= 1


async def driver_state(session: AsyncSession) -> tuple[int, bool, Any]:
    """The session's backend pid, its connection's autocommit flag and transaction status."""
    pid = int((await session.execute(text("select pg_backend_pid()"))).scalar_one())
    raw = await (await session.connection()).get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    return pid, driver.autocommit, driver.info.transaction_status


def test_reads_autocommit_and_writes_run_in_a_transaction_on_one_pool(database_url: str) -> None:
    async def states() -> list[tuple[int, bool, Any]]:
        engine = db_session.make_async_engine(database_url)
        reads = db_session.make_async_session_factory(engine)
        writes = db_session.make_async_session_factory(db_session.in_transactions(engine))
        seen = []
        try:
            for factory in (reads, writes, reads, writes):
                async with factory() as session:
                    seen.append(await driver_state(session))
                    await session.commit()
        finally:
            await engine.dispose()
        return seen

    seen = asyncio.run(states())
    assert len({pid for pid, _, _ in seen}) == 1  # one connection, taken in turn
    idle, in_transaction = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
    read, write = (True, idle), (False, in_transaction)
    assert [state[1:] for state in seen] == [read, write, read, write]


def test_autocommit_next_commits_a_lone_statement_at_once_and_joins_an_open_transaction(
    database_url: str,
) -> None:
    engine = db_session.make_engine(database_url)
    factory = db_session.make_session_factory(engine)
    try:
        with engine.begin() as connection:
            connection.execute(text("create table counter (n integer)"))
            connection.execute(text("insert into counter values (0)"))

        def seen_by_another_session() -> int:
            with factory() as other:
                return int(other.execute(text("select n from counter")).scalar_one())

        with factory() as session:
            db_session.autocommit_next(session)
            session.execute(text("update counter set n = 1"))
            driver: psycopg.Connection[Any] = session.connection().connection.driver_connection  # type: ignore[assignment]
            assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert seen_by_another_session() == 1  # committed without a COMMIT
            session.commit()

        with factory() as session:
            session.execute(text("update counter set n = 2"))
            db_session.autocommit_next(session)  # a transaction is open: the next one joins it
            session.execute(text("update counter set n = 3"))
            assert seen_by_another_session() == 1
            session.rollback()
        assert seen_by_another_session() == 1

        with factory() as session:  # the pool gave the connection back out of autocommit
            session.execute(text("update counter set n = 4"))
            assert seen_by_another_session() == 1
            session.commit()
        assert seen_by_another_session() == 4
    finally:
        engine.dispose()
