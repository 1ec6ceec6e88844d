"""Webhook deliveries: one signed POST per task, and the beat task that re-queues due ones.

A failed POST is never retried by the task itself: it sets `next_attempt_at` and the
re-queue sends it again when that time has come. A tenant has at most
TENANT_CONCURRENCY POSTs in flight across all workers; a delivery that finds them
taken steps aside at once, so a dead endpoint holds a few worker threads for at most
the timeout and never delays another tenant's deliveries."""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta

import redis
from redis.exceptions import LockNotOwnedError
from sqlalchemy import select, update

from shared import webhooks
from shared.egress import Rules
from shared.models import Tenant, WebhookDelivery, utcnow
from shared.providers import ProviderError, post
from shared.queue import DELIVER_WEBHOOK, REQUEUE_WEBHOOKS
from shared.runtime import Runtime
from worker.app import celery, runtime

log = logging.getLogger(__name__)

TENANT_CONCURRENCY = 4
# A POST lasts at most about twice the timeout (connect, then the answer).
LOCK_SECONDS = 2 * webhooks.TIMEOUT_SECONDS + 5
DEFER_SECONDS = 1  # a delivery whose tenant has no free slot is due again after this
REQUEUE_TENANTS_PAGE = 100
# Per re-queue run (every REQUEUE_SECONDS): enough for a healthy endpoint to work off a
# burst at about 10 a second, few enough that a dead one's backlog cannot crowd the queue.
REQUEUE_PER_TENANT = 50

# KEYS[1]: the tenant's slots (a sorted set of owner → expiry). ARGV: now, expiry, owner, limit.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000))
return 1
"""


class TenantSlots:
    """A counting semaphore in Redis: at most `limit` deliveries of one tenant in flight.
    A slot left by a dead worker expires after `seconds`."""

    def __init__(self, client: redis.Redis, tenant_id: str, limit: int = TENANT_CONCURRENCY,
                 seconds: float = LOCK_SECONDS) -> None:
        self.client, self.key, self.limit, self.seconds = client, f"webhook-slots:{tenant_id}", limit, seconds
        self.owner = uuid.uuid4().hex

    def acquire(self) -> bool:
        """Take a slot if one is free; never waits."""
        now = time.time()
        return bool(self.client.eval(_ACQUIRE, 1, self.key, now, now + self.seconds, self.owner, self.limit))

    def release(self) -> None:
        """Give the slot back."""
        self.client.zrem(self.key, self.owner)


def _finish(rt: Runtime, delivery: WebhookDelivery, status: int | None, error: str | None) -> str:
    """Record one attempt: delivered on a 2xx, else due again after the backoff, or given up."""
    now = utcnow()
    attempts = delivery.attempts + 1
    values: dict[str, object] = {"attempts": attempts, "last_status": status, "last_error": error}
    if error is None:
        values.update(delivered_at=now, next_attempt_at=None)
        outcome = "delivered"
    else:
        values["next_attempt_at"] = webhooks.retry_at(now, attempts)
        outcome = "failed" if values["next_attempt_at"] else "given_up"
        if outcome == "given_up":
            values["last_error"] = f"gave up after {attempts} attempts: {error}"
    with rt.db.session() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(values))
    log.info("webhook delivery %s attempt %d: %s (%s)", delivery.id, attempts, outcome, status or error)
    return outcome


def _post(rt: Runtime, delivery: WebhookDelivery, url: str, secret: str) -> tuple[int | None, str | None]:
    """POST the delivery once; answer its status and the error (None when delivered)."""
    body = delivery.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "oauth-keeper-webhooks/1",
               "X-Webhook-Id": delivery.id, "X-Webhook-Signature": webhooks.sign(secret, int(time.time()), body)}
    try:
        answer = post(url, Rules.for_tenant_urls(rt.settings.allow_private_provider_urls), body, headers,
                      webhooks.TIMEOUT_SECONDS)
    except ProviderError as error:  # forbidden_address (the egress guard), timeout, connection_error
        return None, str(error) if error.error == "forbidden_address" else error.error or "connection_error"
    if 200 <= answer.status < 300:
        return answer.status, None
    return answer.status, f"http_{answer.status}"


def deliver(rt: Runtime, delivery_id: str) -> str:
    """Attempt one delivery if it is due; safe to run twice (a lock, then the due check)."""
    lock = rt.redis.lock(f"webhook:{delivery_id}", timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        return "busy"
    try:
        with rt.db.session() as session:
            row = session.execute(select(WebhookDelivery, Tenant.webhook_url, Tenant.webhook_secret_enc)
                                  .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
                                  .where(WebhookDelivery.id == delivery_id)).first()
        if row is None:
            return "missing"
        delivery = row.WebhookDelivery
        now = utcnow()
        if delivery.next_attempt_at is None or delivery.next_attempt_at > now:
            return "not_due"
        if not row.webhook_url or not row.webhook_secret_enc:
            with rt.db.session() as session:
                session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                                .values(next_attempt_at=None, last_error="webhook_removed"))
            return "no_webhook"
        slots = TenantSlots(rt.redis, delivery.tenant_id)
        if not slots.acquire():
            _defer(rt, delivery_id, now)
            return "deferred"
        try:
            status, error = _post(rt, delivery, row.webhook_url, rt.cipher.decrypt(row.webhook_secret_enc))
        finally:
            slots.release()
        return _finish(rt, delivery, status, error)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            log.warning("webhook delivery %s outlived its lock", delivery_id)


def _defer(rt: Runtime, delivery_id: str, now: datetime) -> None:
    """Leave a delivery for the next re-queue, without counting an attempt."""
    with rt.db.session() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                        .values(next_attempt_at=now + timedelta(seconds=DEFER_SECONDS)))


@celery.task(name=DELIVER_WEBHOOK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One delivery attempt. The queued marker is cleared first: from here on the
    delivery's lock covers it, and a worker killed mid-POST leaves only that lock,
    after which the re-queue sends the delivery again."""
    rt = runtime()
    rt.redis.delete(webhooks.queued_key(delivery_id))
    return deliver(rt, delivery_id)


def requeue(rt: Runtime) -> int:
    """Queue every due delivery not already queued, at most REQUEUE_PER_TENANT per tenant;
    return how many were sent. Tenants are walked in keyset pages, each tenant's due
    deliveries read through the (tenant_id, next_attempt_at) index."""
    now = utcnow()
    due = WebhookDelivery.next_attempt_at <= now
    sent, after = 0, ""
    while True:
        with rt.db.session() as session:
            tenants = session.scalars(select(WebhookDelivery.tenant_id).where(due, WebhookDelivery.tenant_id > after)
                                      .group_by(WebhookDelivery.tenant_id).order_by(WebhookDelivery.tenant_id)
                                      .limit(REQUEUE_TENANTS_PAGE)).all()
            ids = [delivery_id for tenant_id in tenants for delivery_id in session.scalars(
                select(WebhookDelivery.id).where(WebhookDelivery.tenant_id == tenant_id, due)
                .order_by(WebhookDelivery.next_attempt_at).limit(REQUEUE_PER_TENANT))]
        sent += webhooks.send(rt.redis, rt.celery, ids)
        if len(tenants) < REQUEUE_TENANTS_PAGE:
            return sent
        after = tenants[-1]


@celery.task(name=REQUEUE_WEBHOOKS, ignore_result=True)
def requeue_webhooks() -> int:
    """Beat's periodic re-queue: retries whose time has come, and deliveries whose
    message was lost (a crash between the commit and the send)."""
    sent = requeue(runtime())
    if sent:
        log.info("re-queued %d webhook deliveries", sent)
    return sent
