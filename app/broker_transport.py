"""kombu's Redis transport, keeping one Redis client per channel for the API's publishes.

kombu's Redis channel builds a new `redis.Redis` for every message it publishes, and a
client's constructor registers some 170 response callbacks: a third of the CPU a POST job
spends on enqueueing. The client only wraps the channel's connection pool, so keeping it
changes nothing else (a new pool, after a reconnect, gets a new client).
Only `CeleryEnqueuer` uses it (by name, so the API imports kombu only when it enqueues).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class ClientKeepingChannel(redis.Channel):
    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._kept_client
        if client is None or client.connection_pool is not self.pool:
            client = self._kept_client = super()._create_client()
        return client


class Transport(redis.Transport):
    Channel = ClientKeepingChannel
