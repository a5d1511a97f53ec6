"""Throwaway databases: a SQLite file under tmp, or a fresh Postgres database dropped after."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "LORAFORGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# Two checkouts running their suites on one machine set different values of these:
# - LORAFORGE_TEST_PREFIX starts every name the suite makes on a shared server: Postgres
#   databases, Celery queues (and so kombu's keys in Redis), S3 buckets;
# - the suite uses Redis databases LORAFORGE_TEST_REDIS_DB and the few after it (REDIS_DBS).
SUITE_PREFIX = os.environ.get("LORAFORGE_TEST_PREFIX", "loraforge-test")
if not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", SUITE_PREFIX):
    # Bucket names allow no more; Postgres allows 63 characters in a database name.
    raise RuntimeError(f"LORAFORGE_TEST_PREFIX={SUITE_PREFIX!r}: use 1-30 of a-z, 0-9 and -")
REDIS_SERVER = os.environ.get("LORAFORGE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB_BASE = int(os.environ.get("LORAFORGE_TEST_REDIS_DB", "11"))
REDIS_DBS = 2
# kombu's Redis transport keeps these beside the queues, one of each per database.
UNACKED, UNACKED_INDEX, BINDING_DEADLINES = "unacked", "unacked_index", "_kombu.binding_deadlines"


def unique_name(kind: str) -> str:
    """`<prefix>-<kind>-<random>`: a name of the suite's own on a shared server."""
    return f"{SUITE_PREFIX}-{kind}-{secrets.token_hex(4)}"


def redis_url(offset: int) -> str:
    """The URL of the suite's Redis database number `offset` (0 .. REDIS_DBS - 1)."""
    assert 0 <= offset < REDIS_DBS
    return f"{REDIS_SERVER}/{REDIS_DB_BASE + offset}"


def check_redis_databases() -> None:
    """Fail with the setting to change when the suite's Redis databases do not exist (a
    server has 16, numbered 0 to 15, unless its `databases` setting says otherwise)."""
    import redis

    for offset in range(REDIS_DBS):
        client = redis.Redis.from_url(redis_url(offset))
        try:
            client.ping()
        except redis.ResponseError as exc:
            raise RuntimeError(
                f"LORAFORGE_TEST_REDIS_DB={REDIS_DB_BASE}: the suite uses Redis databases "
                f"{REDIS_DB_BASE} to {REDIS_DB_BASE + REDIS_DBS - 1} of {REDIS_SERVER}, "
                f"which answers: {exc}"
            ) from exc
        finally:
            client.close()


def forget_queues(url: str, names: list[str]) -> None:
    """Delete what kombu keeps in Redis for the queues and workers `names` name (a queue's
    name, or a worker's hostname prefix such as `loraforge-123@`): their keys, their members
    of shared bindings (a worker killed -9 never unbinds its pidbox queue), unacknowledged
    messages, and binding deadlines left without a binding."""
    import redis

    def ours(value: str | bytes) -> bool:
        text = value.decode() if isinstance(value, bytes) else value
        return any(name in text for name in names)

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match="*"):
            if ours(key):
                client.delete(key)
            elif key.startswith(b"_kombu.binding.") and client.type(key) == b"set":
                # members: routing key, pattern and queue, joined by kombu's separator
                for member in client.smembers(key):
                    if ours(member):
                        client.srem(key, member)
        # unacked: delivery tag -> [message, exchange, routing key]; a queue's exchange and
        # routing key are its name (Celery's default for a queue named in send_task).
        for tag, entry in client.hgetall(UNACKED).items():
            _message, exchange, routing_key = json.loads(entry)
            if ours(exchange) or ours(routing_key):
                client.hdel(UNACKED, tag)
                client.zrem(UNACKED_INDEX, tag)
        for member in client.zrange(BINDING_DEADLINES, 0, -1):
            if not client.exists(b"_kombu.binding." + member):
                client.zrem(BINDING_DEADLINES, member)
    finally:
        client.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create `<prefix>-db-<random>` and yield its URL; drop it (and its sessions) after."""
    name = unique_name("db")
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database of `kind` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'loraforge.db'}"
    else:
        with postgres_database() as url:
            yield url
