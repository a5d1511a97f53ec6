"""/v1/webhooks: endpoints per organization, a test event, and the deliveries with every
attempt. The routes only record; workers send (DESIGN §5c)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import (
    AfterQuery,
    CurrentOrgDep,
    EnqueuerDep,
    LimitQuery,
    SessionDep,
    SettingsDep,
)
from app.api.routes import ERROR_RESPONSES
from app.db.base import unix
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.schemas.common import DeletedObject, ListPage
from app.schemas.webhooks import (
    WebhookAttemptPublic,
    WebhookCreate,
    WebhookDeliveryPublic,
    WebhookPublic,
)
from app.services import webhooks as webhook_service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


def load_webhook(
    session: SessionDep, organization_id: CurrentOrgDep, webhook_id: Annotated[str, Path()]
) -> WebhookEndpoint:
    return webhook_service.get_webhook(session, organization_id, webhook_id)


WebhookDep = Annotated[WebhookEndpoint, Depends(load_webhook)]


def webhook_public(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> WebhookPublic:
    return WebhookPublic(
        id=endpoint.id,
        created_at=unix(endpoint.created_at) or 0,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        secret=endpoint.secret if with_secret else None,
    )


def attempt_public(attempt: WebhookAttempt) -> WebhookAttemptPublic:
    return WebhookAttemptPublic(
        number=attempt.number,
        attempted_at=unix(attempt.attempted_at) or 0,
        status_code=attempt.status_code,
        latency_ms=attempt.latency_ms,
        error=attempt.error,
        response_body=attempt.response_body,
    )


def delivery_public(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt]
) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=delivery.id,
        webhook_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=delivery.status,  # type: ignore[arg-type]
        created_at=unix(delivery.created_at) or 0,
        next_attempt_at=unix(delivery.next_attempt_at),
        finished_at=unix(delivery.finished_at),
        payload=json.loads(delivery.payload),
        attempts=[attempt_public(a) for a in attempts],
    )


@router.post("")
def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, organization_id: CurrentOrgDep
) -> WebhookPublic:
    """Register an endpoint; the answer carries its signing secret, shown this once."""
    endpoint = webhook_service.create_webhook(session, settings, organization_id, body)
    return webhook_public(endpoint, with_secret=True)


@router.get("")
def read_webhooks(
    session: SessionDep,
    organization_id: CurrentOrgDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
) -> ListPage[WebhookPublic]:
    """The organization's endpoints, newest first."""
    rows, has_more = webhook_service.list_webhooks(
        session, organization_id, after=after, limit=limit
    )
    return ListPage[WebhookPublic].of([webhook_public(r) for r in rows], has_more)


@router.get("/{webhook_id}")
def read_webhook(webhook: WebhookDep) -> WebhookPublic:
    return webhook_public(webhook)


@router.delete("/{webhook_id}")
def delete_webhook(webhook: WebhookDep, session: SessionDep) -> DeletedObject:
    """Remove the endpoint; deliveries not yet sent are dropped with it."""
    webhook_service.delete_webhook(session, webhook)
    return DeletedObject(id=webhook.id, object="webhook_endpoint", deleted=True)


@router.post("/{webhook_id}/test")
def test_webhook(
    webhook: WebhookDep, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep
) -> WebhookDeliveryPublic:
    """Send a signed `webhook.test` event to this endpoint; follow it in its deliveries."""
    delivery = webhook_service.send_test(session, settings, enqueuer, webhook)
    return delivery_public(delivery, [])


@router.get("/{webhook_id}/deliveries")
def read_webhook_deliveries(
    webhook: WebhookDep,
    session: SessionDep,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
) -> ListPage[WebhookDeliveryPublic]:
    """Deliveries newest first, each with its attempts (status code, latency, error)."""
    rows, has_more = webhook_service.list_deliveries(session, webhook, after=after, limit=limit)
    return ListPage[WebhookDeliveryPublic].of([delivery_public(d, a) for d, a in rows], has_more)
