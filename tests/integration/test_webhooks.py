"""Webhooks end to end: real receivers over HTTP, real workers and beat, real Redis and database."""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from shared.tokens import record_event
from tests.integration.conftest import StackFactory
from tests.integration.stack import Browser, Stack, Tenant, wait_for
from tests.receiver import Receiver, verify
from worker.webhooks import TENANT_CONCURRENCY

pytestmark = pytest.mark.integration

ALL_TYPES = {"connection.created", "connection.reauthorized", "connection.refresh_failed",
             "connection.needs_reauth", "connection.recovered", "connection.revoked"}


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """One worker and beat (for the re-queue); receivers live on loopback."""
    built = stack_factory(workers=1, ALLOW_PRIVATE_PROVIDER_URLS="1")
    built.start_beat()
    yield built


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _subscribe(tenant: Tenant, receiver: Receiver) -> str:
    """Point the tenant's webhook at the receiver; return the signing secret."""
    response = tenant.call("PUT", "/webhook", json={"url": receiver.url})
    assert response.status_code == 200, response.text
    return response.json()["secret"]


def _record(stack: Stack, connection_id: str, type_: str, error: str | None = None,
            factory: sessionmaker[Any] | None = None) -> None:
    """Write an event the way the service does, in a transaction of the test's own."""
    with (factory or stack.runtime.db.sessions).begin() as session:
        record_event(session, stack.row(connection_id), type_, error)


def test_every_event_type_arrives_signed_and_carries_no_token(stack: Stack, receivers: list[Receiver]) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    tenant = stack.tenant()
    secret = _subscribe(tenant, receiver)
    client, connection_id = tenant.connected()
    integration_id = stack.row(connection_id).integration_id
    secrets = {secret, tenant.api_key, client["client_secret"]}

    def remember_tokens() -> None:
        row = stack.row(connection_id)
        secrets.update(stack.runtime.cipher.decrypt(value) for value in (row.access_token_enc, row.refresh_token_enc)
                       if value)

    remember_tokens()
    stack.knobs(client["client_id"], fail=["503"])  # refresh_failed, then recovered on the retry
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200
    remember_tokens()
    stack.knobs(client["client_id"], fail=["invalid_grant"])  # the grant is gone: needs_reauth
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 409
    attempt = Browser(stack).connect(tenant.connect_url(integration_id, connection_id=connection_id))
    assert attempt["status"] == "succeeded"  # reauthorized
    remember_tokens()
    _record(stack, connection_id, "revoked")

    received = receiver.wait(6)
    time.sleep(1)
    assert len(receiver.received) == 6, "each event is delivered once"
    assert {r.json["type"] for r in received} == ALL_TYPES
    for r in received:
        verify(secret, r)
        data = r.json["data"]
        assert set(r.json) == {"id", "type", "created_at", "data"} and r.json["id"].startswith("evt_")
        assert datetime.fromisoformat(r.json["created_at"].replace("Z", "+00:00"))
        assert data["connection_id"] == connection_id and data["end_user_id"] == "user-1"
        assert data["integration_id"] == integration_id
        expected_status = {"connection.needs_reauth": "needs_reauth", "connection.revoked": "revoked"}
        assert data["status"] == expected_status.get(r.json["type"], "active")
        wire = r.body.decode() + json.dumps(r.headers)
        for value in secrets:
            assert value not in wire, "a token or secret went out in a webhook"
    by_type = {r.json["type"]: r.json["data"] for r in received}
    assert by_type["connection.needs_reauth"]["error"].startswith("invalid_grant")
    assert "error" not in by_type["connection.created"]
    ids = {r.headers["X-Webhook-Id"] for r in received}
    listed = tenant.call("GET", "/webhook/deliveries").json()["data"]
    assert {d["id"] for d in listed} == ids and all(d["attempts"] == 1 and d["last_status"] == 200 for d in listed)


def test_a_failed_delivery_is_retried_soon_with_the_same_id(stack: Stack, receivers: list[Receiver]) -> None:
    receiver = Receiver([500])
    receivers.append(receiver)
    tenant = stack.tenant()
    secret = _subscribe(tenant, receiver)
    tenant.connected()

    first, second = receiver.wait(2, timeout=30)
    assert first.headers["X-Webhook-Id"] == second.headers["X-Webhook-Id"]
    assert first.body == second.body
    assert second.at - first.at <= 10, "the first retry comes within 10 s"
    verify(secret, first)
    verify(secret, second)
    delivery = wait_for(lambda: next((d for d in tenant.call("GET", "/webhook/deliveries").json()["data"]
                                      if d["delivered_at"]), None), what="the delivery to be recorded")
    assert delivery["attempts"] == 2 and delivery["last_status"] == 200 and delivery["next_attempt_at"] is None

    response = tenant.call("POST", f"/webhook/deliveries/{delivery['id']}/retry")
    assert response.status_code == 202, response.text
    third = receiver.wait(3)[2]
    assert third.headers["X-Webhook-Id"] == delivery["id"] and third.body == first.body


def test_an_event_whose_message_never_left_is_delivered_by_the_requeue(stack: Stack,
                                                                     receivers: list[Receiver]) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    tenant = stack.tenant()
    secret = _subscribe(tenant, receiver)
    _, connection_id = tenant.connected()
    receiver.wait(1)
    # A session without the after-commit hook: the transaction commits and nothing is
    # queued, exactly what a process killed right after its commit leaves behind.
    bare = sessionmaker(stack.runtime.db.engine, expire_on_commit=False)
    _record(stack, connection_id, "revoked", factory=bare)

    late = receiver.wait(2, timeout=20)[1]
    assert late.json["type"] == "connection.revoked"
    verify(secret, late)


def test_a_dead_endpoint_does_not_delay_another_tenants_delivery(stack: Stack, receivers: list[Receiver]) -> None:
    dead, alive = Receiver(default="hang"), Receiver()
    receivers.extend([dead, alive])
    slow = stack.tenant("slow")
    _subscribe(slow, dead)
    _, slow_connection = slow.connected()
    for _ in range(15):  # a backlog bigger than the worker's eight threads
        _record(stack, slow_connection, "refresh_failed", "http_503")
    dead.wait(TENANT_CONCURRENCY)

    other = stack.tenant("other")
    _subscribe(other, alive)
    _, connection_id = other.connected()
    arrived = alive.wait(1, timeout=10)[0]
    created = datetime.fromisoformat(arrived.json["created_at"].replace("Z", "+00:00")).timestamp()
    assert arrived.at - created < 3, f"delayed {arrived.at - created:.1f}s behind another tenant's dead endpoint"
    assert dead.most_in_flight <= TENANT_CONCURRENCY


def test_a_worker_killed_mid_delivery_loses_no_event(stack: Stack, receivers: list[Receiver]) -> None:
    receiver = Receiver(["hang"])
    receivers.append(receiver)
    tenant = stack.tenant()
    secret = _subscribe(tenant, receiver)
    tenant.connected()
    first = receiver.wait(1)[0]
    for process in [p for p in stack.processes if p.name not in ("web", "beat")]:
        process.stop(signal.SIGKILL)
    stack.start_worker("w-after-kill")

    again = receiver.wait(2, timeout=60)[1]  # once the dead worker's lock on it expires
    assert again.headers["X-Webhook-Id"] == first.headers["X-Webhook-Id"] and again.body == first.body
    verify(secret, again)
    delivery = wait_for(lambda: next((d for d in tenant.call("GET", "/webhook/deliveries").json()["data"]
                                      if d["delivered_at"]), None), what="the delivery to be recorded")
    assert delivery["attempts"] == 1, "the killed attempt never finished, so it is not counted"
