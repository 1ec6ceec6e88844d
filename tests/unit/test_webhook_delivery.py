"""One delivery attempt (`worker.webhooks.deliver`) against a receiver on loopback,
and the re-queue's choice of due deliveries (in-memory SQLite, fakeredis)."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared import webhooks
from shared.models import Connection, Tenant, WebhookDelivery, utcnow
from shared.runtime import Runtime
from shared.tokens import record_event
from tests.receiver import Receiver, verify
from tests.unit.test_webhooks import SentTasks, _runtime, _subscribed
from web import create_app
from web.metrics import STATE_KEY
from worker.webhooks import REQUEUE_PER_TENANT, TENANT_CONCURRENCY, TenantSlots, deliver, requeue


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def _setup(receiver: Receiver, strict: bool = False, events: int = 1) -> tuple[Runtime, list[str]]:
    """A runtime, a tenant whose webhook is the receiver, and `events` deliveries of it."""
    rt = _runtime(SentTasks())
    if strict:
        rt.settings = rt.settings.model_copy(update={"allow_private_provider_urls": False})
    connection_id = _subscribed(rt)
    with rt.db.session() as session:
        for tenant in session.scalars(select(Tenant)):
            tenant.webhook_url = receiver.url
        connection = session.get(Connection, connection_id)
        for _ in range(events):
            record_event(session, connection, "needs_reauth", "invalid_grant")
    with rt.db.session() as session:
        return rt, list(session.scalars(select(WebhookDelivery.id)))


def _row(rt: Runtime, delivery_id: str) -> WebhookDelivery:
    with rt.db.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
    assert row is not None
    return row


def test_a_delivery_is_signed_with_the_tenants_secret_and_recorded(receiver: Receiver) -> None:
    rt, [delivery_id] = _setup(receiver)
    assert deliver(rt, delivery_id) == "delivered"
    [received] = receiver.received
    verify("whsec_test", received)
    assert received.headers["X-Webhook-Id"] == delivery_id and received.body == _row(rt, delivery_id).body.encode()
    row = _row(rt, delivery_id)
    assert row.attempts == 1 and row.last_status == 200 and row.delivered_at and row.next_attempt_at is None
    assert deliver(rt, delivery_id) == "not_due", "a duplicate message sends nothing"
    assert len(receiver.received) == 1


def test_a_non_2xx_is_retried_after_the_backoff_and_given_up_after_the_last_attempt(receiver: Receiver) -> None:
    receiver.default = 500
    rt, [delivery_id] = _setup(receiver)
    before = utcnow()
    assert deliver(rt, delivery_id) == "failed"
    row = _row(rt, delivery_id)
    assert row.attempts == 1 and row.last_status == 500 and row.last_error == "http_500"
    assert row.next_attempt_at is not None
    assert before + timedelta(seconds=webhooks.BACKOFF_SECONDS[0]) <= row.next_attempt_at
    assert deliver(rt, delivery_id) == "not_due"
    with rt.db.session() as session:
        session.get(WebhookDelivery, delivery_id).attempts = webhooks.MAX_ATTEMPTS - 1
        session.get(WebhookDelivery, delivery_id).next_attempt_at = utcnow()
    assert deliver(rt, delivery_id) == "given_up"
    row = _row(rt, delivery_id)
    assert row.next_attempt_at is None and row.delivered_at is None
    assert row.last_error == f"gave up after {webhooks.MAX_ATTEMPTS} attempts: http_500"


def test_a_private_address_is_refused_before_any_connection(receiver: Receiver) -> None:
    rt, [delivery_id] = _setup(receiver, strict=True)
    assert deliver(rt, delivery_id) == "failed"
    assert receiver.received == []
    assert _row(rt, delivery_id).last_error.startswith("forbidden_address")


def test_a_tenant_with_its_slots_taken_is_deferred_without_counting_an_attempt(receiver: Receiver) -> None:
    rt, [delivery_id] = _setup(receiver)
    tenant_id = _row(rt, delivery_id).tenant_id
    held = [TenantSlots(rt.redis, tenant_id) for _ in range(TENANT_CONCURRENCY)]
    assert all(slot.acquire() for slot in held)
    assert deliver(rt, delivery_id) == "deferred"
    row = _row(rt, delivery_id)
    assert row.attempts == 0 and row.next_attempt_at is not None and row.next_attempt_at > utcnow()
    assert receiver.received == []


def test_a_removed_webhook_ends_its_pending_deliveries(receiver: Receiver) -> None:
    rt, [delivery_id] = _setup(receiver)
    with rt.db.session() as session:
        for tenant in session.scalars(select(Tenant)):
            tenant.webhook_url = None
    assert deliver(rt, delivery_id) == "no_webhook"
    assert _row(rt, delivery_id).next_attempt_at is None and receiver.received == []


def test_the_requeue_sends_due_deliveries_once_and_caps_each_tenant(receiver: Receiver) -> None:
    rt, ids = _setup(receiver, events=REQUEUE_PER_TENANT + 3)
    rt.redis.flushall()  # as if the after-commit sends were lost
    rt.celery.sent.clear()  # type: ignore[attr-defined]
    with rt.db.session() as session:
        session.get(WebhookDelivery, ids[0]).next_attempt_at = utcnow() + timedelta(minutes=5)
        session.get(WebhookDelivery, ids[1]).next_attempt_at = None  # delivered
    assert requeue(rt) == REQUEUE_PER_TENANT
    sent = [args[0] for _, args, _ in rt.celery.sent]  # type: ignore[attr-defined]
    assert len(set(sent)) == REQUEUE_PER_TENANT and not {ids[0], ids[1]} & set(sent)
    assert requeue(rt) == 0, "queued ones are not queued again"


def test_metrics_count_the_deliveries_still_pending(receiver: Receiver) -> None:
    rt, [delivery_id] = _setup(receiver)
    client = create_app(runtime_=rt).test_client()

    def pending() -> float:
        rt.redis.delete(STATE_KEY, f"{STATE_KEY}:computing")  # cached for a while: read them fresh
        text = client.get("/metrics").get_data(as_text=True)
        return next(sample.value for family in text_string_to_metric_families(text)
                    for sample in family.samples if sample.name == "oauth_webhook_deliveries_pending")

    assert pending() == 1
    deliver(rt, delivery_id)
    assert pending() == 0
