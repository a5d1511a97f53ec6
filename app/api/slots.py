"""Requests of one kind that one organization may have running at once, counted in this API
process: uploads, and generations.

An upload holds a thread while its lines are validated and a connection while it is
recorded; a generation holds a slot of the inference server for as long as it streams.
Unbounded, one organization's hundred requests at once would take those from every other
organization; past the bound they are answered 429 with Retry-After before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.errors import ApiError, TooManyConcurrentGenerations, TooManyConcurrentUploads

RETRY_AFTER_S = 1


class OrganizationSlots:
    """`per_organization` requests at once per organization; 0 turns the bound off.

    Taken and given back only on the event loop (the routes that use them are async), so
    the counts need no lock.
    """

    def __init__(self, per_organization: int, refuse: Callable[[int], ApiError]) -> None:
        self.per_organization = per_organization
        self.refuse = refuse
        self._taken: dict[str, int] = {}

    def take(self, organization_id: str) -> None:
        """Take one of the organization's slots, or raise its refusal (a 429)."""
        taken = self._taken.get(organization_id, 0)
        if 0 < self.per_organization <= taken:
            raise self.refuse(taken)
        self._taken[organization_id] = taken + 1

    def give_back(self, organization_id: str) -> None:
        left = self._taken[organization_id] - 1
        if left:
            self._taken[organization_id] = left
        else:
            del self._taken[organization_id]

    @contextmanager
    def slot(self, organization_id: str) -> Iterator[None]:
        """Hold one slot for the block."""
        self.take(organization_id)
        try:
            yield
        finally:
            self.give_back(organization_id)

    def taken(self, organization_id: str) -> int:
        """Slots the organization holds now."""
        return self._taken.get(organization_id, 0)


def upload_slots(per_organization: int) -> OrganizationSlots:
    return OrganizationSlots(
        per_organization,
        lambda taken: TooManyConcurrentUploads(
            f"this organization is already sending {taken} uploads, the most allowed at "
            f"once; retry when one has finished (in about {RETRY_AFTER_S}s)",
            retry_after_s=RETRY_AFTER_S,
        ),
    )


def generation_slots(per_organization: int) -> OrganizationSlots:
    return OrganizationSlots(
        per_organization,
        lambda taken: TooManyConcurrentGenerations(
            f"this organization already has {taken} chat or completion requests running, "
            f"the most allowed at once; retry when one has finished (in about "
            f"{RETRY_AFTER_S}s)",
            retry_after_s=RETRY_AFTER_S,
        ),
    )
