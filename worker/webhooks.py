"""Webhook deliveries, sent from workers (never from an API request).

A delivery is claimed with a compare-and-set (its next attempt pushed past the time a send
can take), sent to the addresses its URL was checked against, and its attempt recorded; a
failure is tried again after a delay that doubles each time, until the retry window closes.
The `webhooks.deliver` task sends one delivery as soon as it is recorded; every worker's
dispatcher thread sends whatever is due, so retries and lost messages need no broker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.base import utcnow
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.queue import TASK_DELIVER_WEBHOOK, Enqueuer, try_send
from app.services.webhook_signing import signed_headers
from app.services.webhook_urls import UrlRefused, check_url
from worker.metrics import WEBHOOK_ATTEMPTS

log = logging.getLogger(__name__)

BATCH = 50
# Bytes of the receiver's answer kept with an attempt; the rest is never read.
RESPONSE_PREFIX_BYTES = 256
MAX_RETRY_DELAY_S = 3600.0
# A claimed delivery is left to its claimer for the send's timeout plus this long.
CLAIM_MARGIN_S = 30.0
USER_AGENT = "loraforge-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code, or an error before any answer."""

    status_code: int | None
    latency_ms: float
    error: str | None = None
    response_body: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    attempts: int
    created_at: datetime
    payload: str
    url: str
    secret: str


def retry_delay(settings: Settings, failures: int) -> float:
    """Seconds to wait after the `failures`-th failed attempt (1, 2, ...)."""
    return min(settings.webhook_retry_base_s * 2 ** (failures - 1), MAX_RETRY_DELAY_S)


def claim(session: Session, settings: Settings, delivery_id: str) -> Claimed | None:
    """The delivery, if it is due and no other worker took it first; else None."""
    now = utcnow()
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    if row is None:
        return None
    delivery, url, secret = row
    hold = timedelta(seconds=settings.webhook_timeout_s + CLAIM_MARGIN_S)
    taken = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempts == delivery.attempts,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + hold)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.commit()
    return Claimed(
        delivery_id, delivery.attempts, delivery.created_at, delivery.payload, url, secret
    )


def send(settings: Settings, claimed: Claimed) -> Outcome:
    """POST the signed payload to an address the URL's check resolved; no redirects."""
    started = time.perf_counter()
    try:
        target = check_url(claimed.url, settings.webhook_allow_hosts)
    except UrlRefused as exc:
        return Outcome(None, 0.0, error=str(exc)[:500])
    headers = {
        **signed_headers(claimed.secret, claimed.delivery_id, int(time.time()), claimed.payload),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": target.host_header,
    }
    try:
        # trust_env=False: a proxy from the environment would connect to the name, not to the
        # address checked here.
        with (
            httpx.Client(timeout=settings.webhook_timeout_s, trust_env=False) as client,
            client.stream(
                "POST",
                target.pinned_url(target.addresses[0]),
                content=claimed.payload.encode(),
                headers=headers,
                extensions={"sni_hostname": target.host},
            ) as response,
        ):
            latency_ms = (time.perf_counter() - started) * 1000
            body = _prefix(response)
    except httpx.HTTPError as exc:
        latency_ms = (time.perf_counter() - started) * 1000
        return Outcome(None, latency_ms, error=f"{type(exc).__name__}: {exc}"[:500])
    error = "redirects are not followed" if response.is_redirect else None
    return Outcome(response.status_code, latency_ms, error=error, response_body=body)


def _prefix(response: httpx.Response) -> str:
    kept = b""
    for chunk in response.iter_raw():
        kept += chunk
        if len(kept) >= RESPONSE_PREFIX_BYTES:
            break
    return kept[:RESPONSE_PREFIX_BYTES].decode(errors="replace")


def record(session: Session, settings: Settings, claimed: Claimed, outcome: Outcome) -> str:
    """Write the attempt and the delivery's next state; returns that state."""
    now = utcnow()
    number = claimed.attempts + 1
    values: dict[str, object] = {"attempts": number}
    if outcome.succeeded:
        values.update(status="succeeded", next_attempt_at=None, finished_at=now)
    else:
        retry_at = now + timedelta(seconds=retry_delay(settings, number))
        closes = claimed.created_at + timedelta(seconds=settings.webhook_retry_window_s)
        if retry_at > closes:
            values.update(status="failed", next_attempt_at=None, finished_at=now)
        else:
            values.update(next_attempt_at=retry_at)
    session.add(
        WebhookAttempt(
            delivery_id=claimed.delivery_id,
            number=number,
            attempted_at=now,
            status_code=outcome.status_code,
            latency_ms=round(outcome.latency_ms, 3),
            error=outcome.error,
            response_body=outcome.response_body,
        )
    )
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.attempts == claimed.attempts
        )
        .values(**values)
    )
    session.commit()
    return str(values.get("status", "pending"))


def deliver(factory: sessionmaker[Session], settings: Settings, delivery_id: str) -> str | None:
    """One attempt of a due delivery; None when it is not due or another worker has it."""
    with factory() as session:
        claimed = claim(session, settings, delivery_id)
    if claimed is None:
        return None
    outcome = send(settings, claimed)
    with factory() as session:
        status = record(session, settings, claimed, outcome)
    WEBHOOK_ATTEMPTS.labels("succeeded" if outcome.succeeded else "failed").inc()
    log.info(
        "webhook %s attempt %d: %s",
        delivery_id,
        claimed.attempts + 1,
        outcome.status_code or outcome.error,
    )
    return status


def due_deliveries(session: Session) -> list[str]:
    """Pending deliveries whose next attempt is due, the longest waiting first."""
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(BATCH)
        )
    )


def deliver_due(factory: sessionmaker[Session], settings: Settings) -> int:
    """Attempt every delivery due now; returns how many this worker attempted."""
    with factory() as session:
        due = due_deliveries(session)
    return sum(deliver(factory, settings, delivery_id) is not None for delivery_id in due)


class WebhookDispatcher:
    """Runs deliver_due every webhook_poll_interval_s in a daemon thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        stop: threading.Event | None = None,
    ) -> None:
        self.factory, self.settings = factory, settings
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_interval_s):
            try:
                deliver_due(self.factory, self.settings)
            except Exception:
                log.warning("webhook pass failed", exc_info=True)


def announce(enqueuer: Enqueuer, settings: Settings, delivery_ids: list[str]) -> None:
    """Ring the bell for deliveries just committed (a lost message waits for a dispatcher)."""
    for delivery_id in delivery_ids:
        try_send(enqueuer, TASK_DELIVER_WEBHOOK, [delivery_id], settings.webhook_queue)
