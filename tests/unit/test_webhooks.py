"""The webhook outbox, signature, schedule and per-tenant slots (in-memory SQLite, fakeredis)."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from sqlalchemy import select

from shared import webhooks
from shared.crypto import Cipher
from shared.db import Database
from shared.logs import redact
from shared.models import Base, Connection, Event, Tenant, WebhookDelivery, utcnow
from shared.runtime import Runtime
from shared.tokens import record_event
from tests.conftest import make_settings, seed_connections
from worker.webhooks import TenantSlots


class SentTasks:
    """Stands in for the Celery client: records what would be queued."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def send_task(self, name: str, args: list[Any], queue: str, **_: Any) -> None:
        self.sent.append((name, args, queue))


def _runtime(celery: Any) -> Runtime:
    """A runtime over in-memory SQLite and fakeredis whose Celery client is `celery`."""
    settings = make_settings()
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys),
                   celery=celery)


def _subscribed(rt: Runtime) -> str:
    """A connection whose tenant has a webhook URL."""
    [connection_id] = seed_connections(rt, [3600])
    with rt.db.session() as session:
        for tenant in session.scalars(select(Tenant)):
            tenant.webhook_url = "https://hooks.example/in"
            tenant.webhook_secret_enc = rt.cipher.encrypt("whsec_test")
    return connection_id


@pytest.fixture
def hooked() -> tuple[Runtime, SentTasks, str]:
    """A runtime whose commits hand deliveries to a recorder, and a connection whose tenant has a URL."""
    sent = SentTasks()
    rt = _runtime(sent)
    return rt, sent, _subscribed(rt)


def _deliveries(rt: Runtime) -> list[WebhookDelivery]:
    with rt.db.session() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def _event(rt: Runtime, connection_id: str, type_: str, error: str | None = None) -> None:
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None
        record_event(session, connection, type_, error)


def test_an_event_with_a_webhook_writes_its_delivery_and_queues_it_after_commit(hooked: Any) -> None:
    rt, sent, connection_id = hooked
    _event(rt, connection_id, "needs_reauth", "invalid_grant: revoked")
    [delivery] = _deliveries(rt)
    with rt.db.session() as session:
        event = session.scalars(select(Event)).one()
    assert delivery.event_id == event.id and delivery.type == "connection.needs_reauth"
    assert delivery.attempts == 0 and delivery.next_attempt_at is not None and delivery.delivered_at is None
    body = json.loads(delivery.body)
    assert body == {"id": event.id, "type": "connection.needs_reauth", "created_at": body["created_at"],
                    "data": {"connection_id": connection_id, "end_user_id": "u",
                             "integration_id": body["data"]["integration_id"], "status": "needs_reauth",
                             "error": "invalid_grant: revoked"}}
    assert body["created_at"].endswith("Z")
    assert sent.sent == [("webhooks.deliver", [delivery.id], "webhooks")]
    assert rt.redis.exists(webhooks.queued_key(delivery.id))


def test_refreshed_has_no_webhook(hooked: Any) -> None:
    rt, sent, connection_id = hooked
    _event(rt, connection_id, "refreshed")
    assert _deliveries(rt) == [] and sent.sent == []


def test_a_tenant_without_a_url_gets_no_delivery(hooked: Any) -> None:
    rt, sent, connection_id = hooked
    with rt.db.session() as session:
        for tenant in session.scalars(select(Tenant)):
            tenant.webhook_url = None
    _event(rt, connection_id, "created")
    assert _deliveries(rt) == [] and sent.sent == []


def test_a_rolled_back_event_leaves_no_delivery_and_queues_nothing(hooked: Any) -> None:
    rt, sent, connection_id = hooked
    with pytest.raises(RuntimeError):
        with rt.db.session() as session:
            connection = session.get(Connection, connection_id)
            record_event(session, connection, "created")
            raise RuntimeError("the change failed")
    assert _deliveries(rt) == [] and sent.sent == []
    session = rt.db.sessions()  # one session, used on after its rollback
    record_event(session, session.get(Connection, connection_id), "created")
    session.rollback()
    record_event(session, session.get(Connection, connection_id), "recovered")
    session.commit()
    session.close()
    assert [args for _, args, _ in sent.sent] == [[d.id for d in _deliveries(rt)]], "only the committed one"


def test_nothing_is_queued_before_the_commit(hooked: Any) -> None:
    rt, sent, connection_id = hooked
    with rt.db.session() as session:
        record_event(session, session.get(Connection, connection_id), "created")
        session.flush()
        assert sent.sent == []
    assert len(sent.sent) == 1


def test_a_broker_that_is_down_does_not_fail_the_committed_change() -> None:
    class Down:
        def send_task(self, *_: Any, **__: Any) -> None:
            raise ConnectionError("broker down")

    rt = _runtime(Down())
    _event(rt, _subscribed(rt), "created")
    [delivery] = _deliveries(rt)  # left for the re-queue, which is not kept off by a marker
    assert not rt.redis.exists(webhooks.queued_key(delivery.id))


def test_the_signature_is_hmac_sha256_of_t_dot_body() -> None:
    body = b'{"id":"evt_1"}'
    expected = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign("whsec_k", 1700000000, body) == f"t=1700000000,v1={expected}"
    assert webhooks.sign("whsec_other", 1700000000, body) != webhooks.sign("whsec_k", 1700000000, body)


def test_retries_come_soon_then_spread_over_more_than_an_hour() -> None:
    now = utcnow()
    waits, attempts = [], 1
    while (when := webhooks.retry_at(now, attempts)) is not None:
        waits.append((when - now).total_seconds())
        attempts += 1
    assert waits[0] <= 10 - webhooks.REQUEUE_SECONDS, "the first retry comes within 10 s, re-queue included"
    assert attempts >= 8 and sum(waits) >= 3600
    assert waits == sorted(waits)
    assert webhooks.retry_at(now, webhooks.MAX_ATTEMPTS) is None
    assert webhooks.retry_at(now, 1) == now + timedelta(seconds=webhooks.BACKOFF_SECONDS[0])


def test_a_tenant_has_at_most_its_slots_in_flight_and_a_dead_holder_s_slot_expires() -> None:
    client = fakeredis.FakeRedis()
    held = [TenantSlots(client, "ten_a", limit=2) for _ in range(2)]
    assert all(slot.acquire() for slot in held)
    assert not TenantSlots(client, "ten_a", limit=2).acquire()
    assert TenantSlots(client, "ten_b", limit=2).acquire(), "another tenant has slots of its own"
    held[0].release()
    assert TenantSlots(client, "ten_a", limit=2).acquire()
    short = TenantSlots(client, "ten_c", limit=1, seconds=-1)  # as if its holder died long ago
    assert short.acquire()
    assert TenantSlots(client, "ten_c", limit=1).acquire()


def test_a_webhook_secret_never_reaches_a_log_line() -> None:
    assert redact("rotated to whsec_Zm9vYmFy-x_1") == "rotated to whsec_[redacted]"
