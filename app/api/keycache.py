"""Recently authenticated API keys, so most requests skip the key lookup.

A hit costs a sha256 and a dict lookup instead of a query: on GET job it is one of the two
queries. The price is revocation: a key revoked elsewhere (`loraforge keys revoke`, another
process) is refused by this process once its entry expires, within `ttl_s`. Only keys that
authenticated are cached, so invalid keys cannot grow it; a ttl of 0 turns it off.

Requests that miss at once with the same key share one lookup: a client that opens a hundred
uploads at once (or at each expiry) would otherwise queue a hundred lookups in the thread
pool, ahead of every other organization's requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    organization_id: str


class KeyCache:
    """Principal by key digest for `ttl_s` seconds. Used from the event loop only (no lock)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}

    async def get_or_look_up(
        self, digest: str, look_up: Callable[[], Awaitable[Principal | None]]
    ) -> Principal | None:
        """The cached principal, or the result of one `look_up` shared by concurrent misses."""
        principal = self.get(digest)
        if principal is not None:
            return principal
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(digest, look_up))
            self._lookups[digest] = lookup
        # One waiter going away (its client disconnected) must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    async def _look_up(
        self, digest: str, look_up: Callable[[], Awaitable[Principal | None]]
    ) -> Principal | None:
        try:
            principal = await look_up()
            if principal is not None:
                self.put(digest, principal)
            return principal
        finally:
            del self._lookups[digest]

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, principal = entry
        if self.clock() >= expires:
            del self._entries[digest]
            return None
        return principal

    def put(self, digest: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        now = self.clock()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[digest] = (now + self.ttl_s, principal)
