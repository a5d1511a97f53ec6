"""Engines and sessions. SQLite gets WAL and a busy timeout: one writer at a time, waiting.

A pooled PostgreSQL connection is pinged before use only when it has sat idle for a while
(PING_AFTER_IDLE_S): a busy API reuses each connection within milliseconds, and a ping on
every checkout (pool_pre_ping) would cost one more round trip per request. A connection
that fails its ping is replaced before the request sees it; one broken while in steady use
fails that request, and SQLAlchemy then recycles every connection older than the failure.

The API's busiest routes go through a second, asynchronous engine on the same database
(psycopg's async mode, or aiosqlite): they run on the event loop, with no hop to the thread
pool, whose threads contend for the GIL at every round trip. Reads that need no transaction
run in autocommit there (no BEGIN before the query, no ROLLBACK after it); creating a job
runs in a transaction (`in_transactions`), on the same pool. Both run the same synchronous
service code as the rest (`run_sync`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
PING_AFTER_IDLE_S = 1.0
# Connections kept open, and opened beyond those under load (closed again when returned).
# The API's thread pool runs up to 40 handlers at once: a pool smaller than the usual
# concurrency opens and closes a connection per request.
POOL_SIZE = 20
POOL_OVERFLOW = 20
# How long a request waits for a pooled connection before it is answered 503 (Retry-After).
POOL_TIMEOUT_S = 10.0
# The isolation level of a connection left as the driver opens it.
DEFAULT_ISOLATION = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE"}


def dump_json(value: Any) -> str:
    """A JSON column's text. NaN and the infinities become null: PostgreSQL's json refuses
    them, and a run that diverges reports a NaN loss, which must not lose the other metrics."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _pool(lock_timeout_s: float | None) -> dict[str, Any]:
    """Pool arguments, and PostgreSQL's lock_timeout when one is given (the API's: a request
    waiting for a row lock longer than that is answered 503 rather than held)."""
    pool: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_OVERFLOW,
        "pool_timeout": POOL_TIMEOUT_S,
    }
    if lock_timeout_s is not None:
        pool["connect_args"] = {"options": f"-c lock_timeout={int(lock_timeout_s * 1000)}"}
    return pool


def make_engine(url: str, *, lock_timeout_s: float | None = None) -> Engine:
    """An engine for `url`; for SQLite, the parent folder is created and WAL switched on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=dump_json,
            # An in-memory database lives in one connection per thread: no pool to size.
            **(_pool(None) if on_disk else {}),
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, json_serializer=dump_json, **_pool(lock_timeout_s))
    _ping_idle_connections(engine)
    return engine


def make_async_engine(url: str, *, lock_timeout_s: float | None = None) -> AsyncEngine:
    """An asynchronous engine on the same database as `url`, for the API's event loop; its
    statements autocommit (the busiest routes only read) unless run `in_transactions`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # make_engine has created the folder; this engine never creates the database.
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        engine = create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"),
            json_serializer=dump_json,
            isolation_level="AUTOCOMMIT",
            **(_pool(None) if on_disk else {}),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        parsed.set(drivername="postgresql+psycopg"),  # psycopg's async mode
        # A page of events parses one JSON value per row: orjson's parser takes a fraction of
        # the stdlib's time. PostgreSQL's json holds no NaN, which orjson would refuse.
        json_serializer=dump_json,
        json_deserializer=orjson.loads,
        isolation_level="AUTOCOMMIT",
        **_pool(lock_timeout_s),
    )
    _ping_idle_connections(engine.sync_engine)
    return engine


def is_contention(error: Exception) -> bool:
    """Whether `error` is the database being busy rather than broken: no pooled connection
    free in time, a row lock not granted within lock_timeout (SQLSTATE 55P03), or SQLite's
    write lock not granted within its busy timeout. Retrying shortly can succeed."""
    if isinstance(error, exc.TimeoutError):
        return True
    if not isinstance(error, exc.OperationalError):
        return False
    if getattr(error.orig, "sqlstate", None) == "55P03":
        return True
    return "database is locked" in str(error.orig)


def in_transactions(engine: AsyncEngine) -> AsyncEngine:
    """`engine` (and its pool) for writes: statements run in a transaction until commit, at
    the level the writing engine's connections have (the database's default)."""
    return engine.execution_options(isolation_level=DEFAULT_ISOLATION[engine.dialect.name])


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a connection on checkout if it has been idle PING_AFTER_IDLE_S or more."""

    def mark(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and checks out another (or a new one).
            raise exc.DisconnectionError(str(error)) from error

    event.listen(engine, "connect", mark)
    event.listen(engine, "checkin", mark)
    event.listen(engine, "checkout", checkout)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def autocommit_next(session: Session) -> None:
    """Run the session's next statements in autocommit, each committed on its own.

    It saves the BEGIN and COMMIT round trips around a lone statement. With a transaction
    already open, the statements join it as usual. The pool restores the connection's
    isolation level when the session lets it go.
    """
    if not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
