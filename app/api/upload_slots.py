"""Uploads one organization may send at once, counted in this API process.

An upload holds a thread while its lines are validated and a connection while it is
recorded. Unbounded, one organization's hundred uploads at once would take the thread pool
and the connection pool from every other organization; past the bound they are answered 429
with Retry-After before their bodies are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import TooManyConcurrentUploads

RETRY_AFTER_S = 1


class UploadSlots:
    """`per_organization` uploads at once per organization; 0 turns the bound off.

    Taken and released only on the event loop (the upload route is async), so the counts
    need no lock.
    """

    def __init__(self, per_organization: int) -> None:
        self.per_organization = per_organization
        self._taken: dict[str, int] = {}

    @contextmanager
    def slot(self, organization_id: str) -> Iterator[None]:
        """Hold one of the organization's slots, or raise TooManyConcurrentUploads."""
        taken = self._taken.get(organization_id, 0)
        if 0 < self.per_organization <= taken:
            raise TooManyConcurrentUploads(
                f"this organization is already sending {taken} uploads, the most allowed at "
                f"once; retry when one has finished (in about {RETRY_AFTER_S}s)",
                retry_after_s=RETRY_AFTER_S,
            )
        self._taken[organization_id] = taken + 1
        try:
            yield
        finally:
            left = self._taken[organization_id] - 1
            if left:
                self._taken[organization_id] = left
            else:
                del self._taken[organization_id]

    def taken(self, organization_id: str) -> int:
        """Slots the organization holds now."""
        return self._taken.get(organization_id, 0)
