"""Webhook deliveries from a worker's dispatcher to a receiver on 127.0.0.1: signed per
Standard Webhooks (checked with the official library), retried with growing delays, each
attempt recorded, given up when the window closes, never redirected, never sent twice at
once, and refused at delivery time where the URL stopped being allowed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.config import Settings
from app.db.migrate import upgrade_head
from app.db.models import WebhookAttempt, WebhookDelivery
from app.db.session import make_engine, make_session_factory
from app.schemas.webhooks import WebhookCreate
from app.services.keys import get_or_create_organization
from app.services.webhooks import create_webhook, record_job_event
from tests.receivers import Received, receiver
from worker.webhooks import WebhookDispatcher

RETRY_BASE_S = 0.4


@pytest.fixture
def hook_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url="memory://",
        webhook_allow_hosts=["127.0.0.1"],
        webhook_retry_base_s=RETRY_BASE_S,
        webhook_poll_interval_s=0.05,
        webhook_timeout_s=5,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def factory(hook_settings: Settings) -> Iterator[sessionmaker[Session]]:
    upgrade_head(hook_settings.resolved_database_url())
    engine = make_engine(hook_settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


def endpoint(factory: sessionmaker[Session], settings: Settings, url: str) -> tuple[str, str, str]:
    """(organization id, webhook id, secret) of a new endpoint for every event."""
    with factory() as session:
        organization = get_or_create_organization(session, "acme")
        session.commit()
        created = create_webhook(session, settings, organization.id, WebhookCreate(url=url))
        return organization.id, created.id, created.secret


def job_succeeded(factory: sessionmaker[Session], organization_id: str, job_id: str) -> str:
    """Record a job's succeeded event, as the worker does at the transition."""
    with factory() as session:
        (delivery_id,) = record_job_event(session, job_id, organization_id, "succeeded")
        session.commit()
        return delivery_id


@contextmanager
def dispatching(factory: sessionmaker[Session], settings: Settings) -> Iterator[None]:
    dispatcher = WebhookDispatcher(factory, settings)
    dispatcher.start()
    try:
        yield
    finally:
        dispatcher.stop()
        dispatcher.join(10)


def wait_finished(factory: sessionmaker[Session], delivery_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with factory() as session:
            if session.get_one(WebhookDelivery, delivery_id).status != "pending":
                return
        time.sleep(0.05)
    raise AssertionError(f"delivery {delivery_id} still pending after {timeout} s")


def attempts_of(factory: sessionmaker[Session], delivery_id: str) -> list[WebhookAttempt]:
    with factory() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.number)
            )
        )


def verified(secret: str, request: Received) -> dict[str, object]:
    """The payload, once the official library accepts its signature."""
    event: dict[str, object] = Webhook(secret).verify(request.body, request.headers)
    return event


def test_a_receiver_answering_500_twice_then_200_gets_three_attempts_with_growing_delays(
    factory: sessionmaker[Session], hook_settings: Settings
):
    with receiver([500, 500]) as hook, dispatching(factory, hook_settings):
        organization_id, _, secret = endpoint(factory, hook_settings, hook.url)
        delivery_id = job_succeeded(factory, organization_id, "ftjob-abc")
        first, second, third = hook.wait_for(3, timeout=30)
        wait_finished(factory, delivery_id, timeout=10)
        time.sleep(3 * RETRY_BASE_S)
        assert len(hook.received) == 3, "a succeeded delivery was sent again"

    for request in (first, second, third):
        event = verified(secret, request)
        assert event["type"] == "fine_tuning.job.succeeded"
        assert event["object"] == "event" and event["data"] == {"id": "ftjob-abc"}
        assert request.headers["webhook-id"] == delivery_id  # stable across attempts
        assert request.body == first.body
    gap_1, gap_2 = second.at - first.at, third.at - second.at
    assert gap_1 >= RETRY_BASE_S * 0.9, gap_1
    assert gap_2 >= 2 * RETRY_BASE_S * 0.9 and gap_2 > gap_1, (gap_1, gap_2)

    with factory() as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (
            "succeeded",
            3,
            None,
        )
    attempts = attempts_of(factory, delivery_id)
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert all(a.latency_ms > 0 for a in attempts)
    assert attempts[0].response_body == "x" * 256  # a prefix only of the 2000-byte answer
    assert attempts[2].response_body == "ok"


def test_a_tampered_body_fails_the_official_verification(
    factory: sessionmaker[Session], hook_settings: Settings
):
    with receiver() as hook, dispatching(factory, hook_settings):
        organization_id, _, secret = endpoint(factory, hook_settings, hook.url)
        job_succeeded(factory, organization_id, "ftjob-abc")
        (request,) = hook.wait_for(1, timeout=30)
    tampered = request.body.replace(b"ftjob-abc", b"ftjob-xyz")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, request.headers)
    verified(secret, request)


def test_a_delivery_is_given_up_once_its_retry_window_closes(
    factory: sessionmaker[Session], hook_settings: Settings
):
    # Attempts at about 0 s, 0.3 s and 0.9 s; the next would be at 2.1 s, past the window.
    settings = hook_settings.model_copy(
        update={"webhook_retry_base_s": 0.3, "webhook_retry_window_s": 1.5}
    )
    with receiver([503] * 10) as hook, dispatching(factory, settings):
        organization_id, _, _ = endpoint(factory, settings, hook.url)
        delivery_id = job_succeeded(factory, organization_id, "ftjob-abc")
        wait_finished(factory, delivery_id, timeout=30)
        time.sleep(1.0)
        received = len(hook.received)
    with factory() as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        assert delivery.status == "failed" and delivery.finished_at is not None
    assert received == 3 == len(attempts_of(factory, delivery_id))


def test_redirects_are_recorded_as_failures_and_not_followed(
    factory: sessionmaker[Session], hook_settings: Settings
):
    settings = hook_settings.model_copy(update={"webhook_retry_base_s": 60})
    with (
        receiver() as elsewhere,
        receiver([307], location=elsewhere.url) as hook,
        dispatching(factory, settings),
    ):
        organization_id, _, _ = endpoint(factory, settings, hook.url)
        delivery_id = job_succeeded(factory, organization_id, "ftjob-abc")
        hook.wait_for(1, timeout=30)
        time.sleep(0.5)
        assert elsewhere.received == []
    (attempt,) = attempts_of(factory, delivery_id)
    assert attempt.status_code == 307 and attempt.error == "redirects are not followed"


def test_a_url_no_longer_allowed_is_not_called_at_delivery_time(
    factory: sessionmaker[Session], hook_settings: Settings
):
    settings = hook_settings.model_copy(update={"webhook_retry_base_s": 60})
    with receiver() as hook:
        organization_id, _, _ = endpoint(factory, settings, hook.url)
        delivery_id = job_succeeded(factory, organization_id, "ftjob-abc")
        strict = settings.model_copy(update={"webhook_allow_hosts": []})
        with dispatching(factory, strict):
            deadline = time.monotonic() + 30
            while not attempts_of(factory, delivery_id) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert hook.received == []
    (attempt,) = attempts_of(factory, delivery_id)
    assert attempt.status_code is None and "not a public address" in (attempt.error or "")


def test_two_dispatchers_at_once_send_each_event_once(
    factory: sessionmaker[Session], hook_settings: Settings
):
    with receiver() as hook:
        organization_id, _, _ = endpoint(factory, hook_settings, hook.url)
        ids = [job_succeeded(factory, organization_id, f"ftjob-{n}") for n in range(8)]
        with dispatching(factory, hook_settings), dispatching(factory, hook_settings):
            hook.wait_for(8, timeout=30)
            for delivery_id in ids:
                wait_finished(factory, delivery_id, timeout=10)
            time.sleep(0.5)
        sent = sorted(request.headers["webhook-id"] for request in hook.received)
    assert sent == sorted(ids)
    jobs = sorted(json.loads(r.body)["data"]["id"] for r in hook.received)
    assert jobs == sorted(f"ftjob-{n}" for n in range(8))
