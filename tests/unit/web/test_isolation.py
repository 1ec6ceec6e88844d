"""Tenants don't see each other: over every /api/v1 endpoint, walked from the URL map so
that a new one is covered the day it is added, another tenant's ids answer 404, its
rows never appear in a list, and nothing of the owner's changes."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from shared.models import Connection, Tenant, WebhookDelivery, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant
from shared.tokens import record_event
from tests.unit.web.test_connect import RecordingCelery
from web import create_app

PUBLIC = {"/api/v1/openapi.json"}


@pytest.fixture
def app(memory_runtime: Runtime) -> Flask:
    memory_runtime.celery = RecordingCelery()  # type: ignore[assignment]
    return create_app(runtime_=memory_runtime)


@pytest.fixture
def owner(app: Flask, memory_runtime: Runtime) -> dict[str, str]:
    """A tenant with an integration, a connection with a token, a webhook and a delivery."""
    client = app.test_client()
    with memory_runtime.db.session() as session:
        tenant, key = create_tenant(session, "owner")
        tenant.webhook_url = "https://hooks.example/owner"
        tenant.webhook_secret_enc = memory_runtime.cipher.encrypt("owner-webhook-secret")
    auth = {"Authorization": f"Bearer {key}"}
    body = {"provider": "respondio", "client_id": "cid", "client_secret": "s3cr3t", "scopes": ["a"]}
    integration_id = client.post("/api/v1/integrations", json=body, headers=auth).get_json()["id"]
    with memory_runtime.db.session() as session:
        connection = Connection(tenant_id=tenant.id, integration_id=integration_id, end_user_id="user-1",
                                scopes=["a"], access_token_enc=memory_runtime.cipher.encrypt("owner-token"),
                                refresh_token_enc=memory_runtime.cipher.encrypt("owner-refresh"),
                                expires_at=utcnow() + timedelta(hours=1), last_refreshed_at=utcnow())
        session.add(connection)
        session.flush()
        record_event(session, connection, "created")
    with memory_runtime.db.session() as session:
        delivery_id = session.scalar(select(WebhookDelivery.id))
    assert delivery_id, "the owner needs a delivery for the matrix to cover the deliveries"
    return {"tenant_id": tenant.id, "integration_id": integration_id, "connection_id": connection.id,
            "delivery_id": delivery_id}


def snapshot(rt: Runtime, owner: dict[str, str]) -> dict[str, Any]:
    """Everything of the owner's that a stranger's call could change."""
    with rt.db.session() as session:
        connection = session.get(Connection, owner["connection_id"])
        tenant = session.get(Tenant, owner["tenant_id"])
        delivery = session.get(WebhookDelivery, owner["delivery_id"])
        assert connection and tenant and delivery
        return {"connection": (connection.status, connection.version, connection.access_token_enc,
                               connection.refresh_token_enc),
                "webhook": (tenant.webhook_url, tenant.webhook_secret_enc),
                "delivery": (delivery.attempts, delivery.next_attempt_at, delivery.delivered_at)}


def test_another_tenants_ids_answer_404_on_every_endpoint_and_change_nothing(
        app: Flask, memory_runtime: Runtime, owner: dict[str, str]) -> None:
    with memory_runtime.db.session() as session:
        _, stranger_key = create_tenant(session, "stranger")
    stranger = {"Authorization": f"Bearer {stranger_key}"}
    before = snapshot(memory_runtime, owner)
    client = app.test_client()
    covered = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule in PUBLIC or not rule.arguments:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: owner[m.group(1)], rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method, headers=stranger, json={})
            assert response.status_code == 404, (method, rule.rule, response.status_code, response.data)
            assert response.get_json()["error"]["code"] == "not_found"
            covered += 1
    assert covered >= 7  # an integration; a connection, its token, refresh, events and delete; a delivery's retry

    # Ids in a body or a query string are another tenant's too.
    session_body = {"integration_id": owner["integration_id"], "end_user_id": "u"}
    assert client.post("/api/v1/connect-sessions", json=session_body, headers=stranger).status_code == 404
    for listing in ("/api/v1/integrations", "/api/v1/connections",
                    f"/api/v1/connections?integration_id={owner['integration_id']}", "/api/v1/webhook/deliveries"):
        answer = client.get(listing, headers=stranger)
        assert answer.status_code == 200 and answer.get_json()["data"] == [], listing
    assert client.get("/api/v1/webhook", headers=stranger).get_json() == {"url": None}
    assert client.delete("/api/v1/webhook", headers=stranger).status_code == 204

    assert snapshot(memory_runtime, owner) == before
    assert memory_runtime.celery.sent == []  # type: ignore[attr-defined]  # no revocation, no delivery
