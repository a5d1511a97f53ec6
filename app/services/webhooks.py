"""Webhook endpoints (create, list, read, delete, test) and the outbox their events go to.

The API and the workers only record deliveries here, in the transaction of the change they
announce; workers send them (worker/webhooks.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import new_id, unix, utcnow
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.errors import InvalidRequest, QuotaExceeded, WebhookNotFound
from app.queue import TASK_DELIVER_WEBHOOK, Enqueuer, try_send
from app.schemas.webhooks import EVENT_TYPES, EXPORT_EVENTS, JOB_EVENTS, TEST_EVENT, WebhookCreate
from app.services.pagination import page_by_created
from app.services.webhook_signing import new_secret
from app.services.webhook_urls import UrlRefused, check_url

MAX_WEBHOOKS = 20


def create_webhook(
    session: Session, settings: Settings, organization_id: str, body: WebhookCreate
) -> WebhookEndpoint:
    """Check the URL (SSRF), then commit an endpoint with a new signing secret."""
    try:
        check_url(body.url, settings.webhook_allow_hosts)
    except UrlRefused as exc:
        raise InvalidRequest(str(exc), param="url", code="invalid_webhook_url") from exc
    count = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.organization_id == organization_id)
    )
    if (count or 0) >= MAX_WEBHOOKS:
        raise QuotaExceeded(
            f"an organization may have at most {MAX_WEBHOOKS} webhooks", code="too_many_webhooks"
        )
    endpoint = WebhookEndpoint(
        id=new_id("wh"),
        organization_id=organization_id,
        url=body.url,
        events=list(body.events or EVENT_TYPES),
        description=body.description,
        secret=new_secret(),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.commit()
    return endpoint


def list_webhooks(
    session: Session, organization_id: str, *, after: str | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.organization_id == organization_id)
    return page_by_created(
        session, WebhookEndpoint, stmt, organization_id=organization_id, after=after, limit=limit
    )


def get_webhook(session: Session, organization_id: str, webhook_id: str) -> WebhookEndpoint:
    """The tenant's endpoint, or 404 (another tenant's id included)."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == webhook_id, WebhookEndpoint.organization_id == organization_id
        )
    )
    if endpoint is None:
        raise WebhookNotFound(f"no webhook with id {webhook_id!r}", param="webhook_id")
    return endpoint


def delete_webhook(session: Session, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint; its deliveries, sent or not, go with it (ON DELETE CASCADE)."""
    session.delete(endpoint)
    session.commit()


def record_event(
    session: Session,
    organization_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    endpoints: Sequence[WebhookEndpoint] | None = None,
) -> list[str]:
    """Add one pending delivery of the event per endpoint subscribed to it; returns their
    ids. The caller commits, with the change the event announces."""
    if endpoints is None:
        rows = session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.organization_id == organization_id)
        )
        endpoints = [e for e in rows if event_type in e.events]
    if not endpoints:
        return []
    now = utcnow()
    event = {
        "id": new_id("evt"),
        "object": "event",
        "type": event_type,
        "created_at": unix(now),
        "data": data,
    }
    payload = json.dumps(event, separators=(",", ":"))
    deliveries = [
        WebhookDelivery(
            id=new_id("msg"),
            endpoint_id=endpoint.id,
            organization_id=organization_id,
            event_id=event["id"],
            event_type=event_type,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint in endpoints
    ]
    session.add_all(deliveries)
    return [delivery.id for delivery in deliveries]


def record_job_event(session: Session, job_id: str, organization_id: str, status: str) -> list[str]:
    """The event of a job that reached `status`, when that status has one."""
    event_type = JOB_EVENTS.get(status)
    if event_type is None:
        return []
    return record_event(session, organization_id, event_type, {"id": job_id})


def record_export_event(
    session: Session, export_id: str, job_id: str, organization_id: str, status: str
) -> list[str]:
    """The event of an export that reached `status`, when that status has one."""
    event_type = EXPORT_EVENTS.get(status)
    if event_type is None:
        return []
    data = {"id": export_id, "fine_tuning_job_id": job_id}
    return record_event(session, organization_id, event_type, data)


def send_test(
    session: Session, settings: Settings, enqueuer: Enqueuer, endpoint: WebhookEndpoint
) -> WebhookDelivery:
    """Record a `webhook.test` event for this endpoint alone, then ring the workers' bell."""
    (delivery_id,) = record_event(
        session, endpoint.organization_id, TEST_EVENT, {"id": endpoint.id}, endpoints=[endpoint]
    )
    session.commit()
    try_send(enqueuer, TASK_DELIVER_WEBHOOK, [delivery_id], settings.webhook_queue)
    return session.get_one(WebhookDelivery, delivery_id)


def list_deliveries(
    session: Session, endpoint: WebhookEndpoint, *, after: str | None, limit: int
) -> tuple[list[tuple[WebhookDelivery, list[WebhookAttempt]]], bool]:
    """The endpoint's deliveries, newest first, each with its attempts, oldest first."""
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint.id,
        WebhookDelivery.organization_id == endpoint.organization_id,
    )
    deliveries, has_more = page_by_created(
        session,
        WebhookDelivery,
        stmt,
        organization_id=endpoint.organization_id,
        after=after,
        limit=limit,
    )
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(d, attempts[d.id]) for d in deliveries], has_more
