"""Broker reachability for /readyz, without Celery's minutes of retries."""

from __future__ import annotations

BROKER_TIMEOUT_S = 2.0


def broker_reachable(url: str) -> tuple[bool, str]:
    """(True, "") when a connection to the broker at `url` opens within two seconds."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:
        return False, type(exc).__name__
    return True, ""
