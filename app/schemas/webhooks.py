"""Webhook endpoints and their deliveries. Event names and payloads are OpenAI's
(`fine_tuning.job.succeeded`...); the paused and export events are loraforge's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import NO_CONTROL_CHARACTERS
from app.schemas.spec import StrictModel

JOB_EVENTS: dict[str, str] = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
    "paused": "fine_tuning.job.paused",
}
EXPORT_EVENTS: dict[str, str] = {
    "succeeded": "fine_tuning.export.succeeded",
    "failed": "fine_tuning.export.failed",
}
EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "fine_tuning.export.succeeded",
    "fine_tuning.export.failed",
]
EVENT_TYPES: tuple[str, ...] = (*JOB_EVENTS.values(), *EXPORT_EVENTS.values())
# Sent by POST /v1/webhooks/{id}/test to that endpoint only, whatever it subscribed to.
TEST_EVENT = "webhook.test"


class WebhookCreate(StrictModel):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    # Empty or absent: every event.
    events: Annotated[list[EventType], Field(max_length=len(EVENT_TYPES))] | None = None
    # Stored: no control characters (PostgreSQL refuses NUL in text).
    description: Annotated[str, Field(max_length=512, pattern=NO_CONTROL_CHARACTERS)] = ""


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    url: str
    events: list[str]
    description: str
    # Only in the answer to the creation: it is never shown again.
    secret: str | None = None


class WebhookAttemptPublic(BaseModel):
    number: int
    attempted_at: int
    status_code: int | None
    latency_ms: float
    error: str | None
    response_body: str | None


class WebhookDeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    created_at: int
    next_attempt_at: int | None
    finished_at: int | None
    payload: dict[str, Any]
    attempts: list[WebhookAttemptPublic]
