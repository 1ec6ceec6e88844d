"""Webhooks: which events have one, the outbox row written with the event, the
signature, the retry schedule, and the hand-off to the delivery task after commit.

A delivery row is inserted in the same transaction as the event it reports, so it
exists exactly when the change does. Its id is queued only once the transaction has
committed (an `after_commit` hook of the session factory); if the process dies in
between, the re-queue beat task finds the row by `next_attempt_at` and sends it."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import Celery
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Connection, Tenant, WebhookDelivery, new_id
from shared.queue import DELIVER_WEBHOOK, WEBHOOK_QUEUE

log = logging.getLogger(__name__)

# Event row type → webhook type; `refreshed` has none (it is the normal case).
WEBHOOK_TYPES = {
    "created": "connection.created",
    "reauthorized": "connection.reauthorized",
    "refresh_failed": "connection.refresh_failed",
    "needs_reauth": "connection.needs_reauth",
    "recovered": "connection.recovered",
    "revoked": "connection.revoked",
}
# The connection's status right after each event (a failing refresh leaves it active).
STATUS_AFTER = {"needs_reauth": "needs_reauth", "revoked": "revoked"}

TIMEOUT_SECONDS = 10.0
# Wait after the n-th failed attempt: the first retry comes within 10 s (with the
# re-queue period), then they spread over about three hours; ten attempts in all.
BACKOFF_SECONDS = (3, 30, 120, 300, 600, 1200, 1800, 3600, 3600)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
REQUEUE_SECONDS = 5
# Marks a delivery as sitting in the queue, so the re-queue does not send it twice;
# it outlives a normal wait in the queue and expires after a lost message (a duplicate
# sent after a longer wait is harmless: the delivery's lock and due check stop it).
QUEUED_TTL_SECONDS = 30
SECRET_PREFIX = "whsec_"
_PENDING = "webhook_deliveries"  # key in Session.info: delivery ids to queue after commit


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Webhook-Signature` value: HMAC-SHA256 of "<t>.<raw body>" under the secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(event_id: str, event_type: str, created_at: datetime, connection: Connection,
            error: str | None) -> dict[str, Any]:
    """The JSON a webhook carries: the event and the connection's public fields, never a token."""
    data: dict[str, Any] = {
        "connection_id": connection.id,
        "end_user_id": connection.end_user_id,
        "integration_id": connection.integration_id,
        "status": STATUS_AFTER.get(event_type, "active"),
    }
    if error is not None:
        data["error"] = error
    return {"id": event_id, "type": WEBHOOK_TYPES[event_type],
            "created_at": created_at.isoformat().replace("+00:00", "Z"), "data": data}


def add_delivery(session: Session, connection: Connection, event_id: str, event_type: str, error: str | None,
                 created_at: datetime) -> str | None:
    """Write the outbox row of an event in the caller's transaction, when the event has a
    webhook and the tenant has a URL; queue it once that transaction commits."""
    if event_type not in WEBHOOK_TYPES:
        return None
    has_url = session.scalar(select(Tenant.webhook_url.is_not(None)).where(Tenant.id == connection.tenant_id))
    if not has_url:
        return None
    delivery_id = new_id("whd")
    body = json.dumps(payload(event_id, event_type, created_at, connection, error), separators=(",", ":"))
    session.execute(insert(WebhookDelivery.__table__).values(
        id=delivery_id, tenant_id=connection.tenant_id, event_id=event_id, type=WEBHOOK_TYPES[event_type],
        body=body, attempts=0, next_attempt_at=created_at, created_at=created_at))
    queue_after_commit(session, delivery_id)
    return delivery_id


def queue_after_commit(session: Session, delivery_id: str) -> None:
    """Send the delivery task for this id once the session's transaction has committed."""
    session.info.setdefault(_PENDING, []).append(delivery_id)


def queued_key(delivery_id: str) -> str:
    """The marker of a delivery waiting in the queue."""
    return f"webhook-queued:{delivery_id}"


def send(client: redis.Redis, celery: Celery, delivery_ids: Iterable[str]) -> int:
    """Queue the deliveries that are not queued already; return how many were sent."""
    ids = list(delivery_ids)
    if not ids:
        return 0
    pipe = client.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.set(queued_key(delivery_id), 1, nx=True, ex=QUEUED_TTL_SECONDS)
    fresh = [delivery_id for delivery_id, claimed in zip(ids, pipe.execute(), strict=True) if claimed]
    for n, delivery_id in enumerate(fresh):
        try:
            # No publish retries: a broker that is down must not hold up the caller; the
            # re-queue sends the delivery once it is back.
            celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOK_QUEUE, ignore_result=True,
                             retry=False)
        except Exception:
            client.delete(*(queued_key(unsent) for unsent in fresh[n:]))
            raise
    return len(fresh)


def send_after_commit(sessions: sessionmaker[Session], client: redis.Redis, celery: Celery) -> None:
    """Hook the session factory: after a commit, queue the deliveries it wrote; after a
    rollback, forget them. A failure to queue is logged, never raised into the caller,
    whose transaction is already committed: the re-queue beat task sends them later."""

    @event.listens_for(sessions, "after_commit")
    def _queue(session: Session) -> None:
        pending = session.info.pop(_PENDING, None)
        if not pending:
            return
        try:
            send(client, celery, pending)
        except Exception:  # noqa: BLE001 - the beat re-queue covers a broker that is down
            log.warning("could not queue %d webhook deliveries now; the re-queue will", len(pending),
                        exc_info=True)

    @event.listens_for(sessions, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(_PENDING, None)


def retry_at(now: datetime, attempts: int) -> datetime | None:
    """When the next attempt is due after `attempts` failed ones; None once they are spent."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return now + timedelta(seconds=BACKOFF_SECONDS[max(attempts, 1) - 1])
