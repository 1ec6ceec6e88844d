"""`DELETE /api/v1/connections/{id}` and the revocation rules (Flask test client,
fakeredis, in-memory SQLite; Celery is a recording stand-in)."""
from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.models import Connection, Event
from shared.queue import REVOKE_CONNECTION
from shared.refreshes import UPDATES_CHANNEL
from shared.revocations import erase_tokens, mark_revoked
from shared.runtime import Runtime
from shared.tenants import create_tenant
from shared.tokens import fenced_update
from tests.unit.web.test_connect import RecordingCelery
from web import create_app

INTEGRATION = {"provider": "oauth2", "client_id": "cid", "client_secret": "s3cr3t-value", "scopes": ["a"],
               "authorize_url": "https://idp.example/a", "token_url": "https://idp.example/t",
               "revoke_url": "https://idp.example/r"}


class Tenant:
    def __init__(self, client: FlaskClient, rt: Runtime, name: str) -> None:
        with rt.db.session() as session:
            tenant, self.key = create_tenant(session, name)
        self.client, self.id = client, tenant.id

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.open(f"/api/v1{path}", method=method, headers={"Authorization": f"Bearer {self.key}"},
                                **kwargs)


@pytest.fixture
def celery(memory_runtime: Runtime) -> RecordingCelery:
    memory_runtime.celery = RecordingCelery()  # type: ignore[assignment]
    return memory_runtime.celery  # type: ignore[return-value]


@pytest.fixture
def client(memory_runtime: Runtime, celery: RecordingCelery) -> FlaskClient:
    return create_app(runtime_=memory_runtime).test_client()


def _connection(rt: Runtime, tenant: Tenant) -> tuple[str, str]:
    """An integration and an active connection with tokens, of this tenant."""
    integration = tenant("POST", "/integrations", json=INTEGRATION).get_json()
    with rt.db.session() as session:
        connection = Connection(tenant_id=tenant.id, integration_id=integration["id"], end_user_id="u", scopes=[],
                                access_token_enc=rt.cipher.encrypt("at"), refresh_token_enc=rt.cipher.encrypt("rt"))
        session.add(connection)
    return integration["id"], connection.id


def _events(rt: Runtime, connection_id: str) -> list[str]:
    with rt.db.session() as session:
        return [e.type for e in session.query(Event).filter_by(connection_id=connection_id).order_by(Event.created_at)]


def test_a_delete_revokes_at_once_announces_it_and_queues_one_revocation(
        memory_runtime: Runtime, client: FlaskClient, celery: RecordingCelery) -> None:
    tenant = Tenant(client, memory_runtime, "acme")
    _, connection_id = _connection(memory_runtime, tenant)
    assert tenant("GET", f"/connections/{connection_id}/token").status_code == 200
    pubsub = memory_runtime.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(UPDATES_CHANNEL)

    response = tenant("DELETE", f"/connections/{connection_id}")
    assert response.status_code == 202
    assert response.get_json()["id"] == connection_id and response.get_json()["status"] == "revoked"
    refused = tenant("GET", f"/connections/{connection_id}/token")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "revoked"
    assert [(s["name"], s["args"]) for s in celery.sent] == [(REVOKE_CONNECTION, [connection_id])]
    assert _events(memory_runtime, connection_id) == ["revoked"]
    messages = [pubsub.get_message(timeout=0.2) for _ in range(3)]
    assert [m["data"] for m in messages if m] == [connection_id.encode()]


def test_a_second_delete_answers_202_and_changes_nothing(
        memory_runtime: Runtime, client: FlaskClient, celery: RecordingCelery) -> None:
    tenant = Tenant(client, memory_runtime, "acme")
    _, connection_id = _connection(memory_runtime, tenant)
    assert tenant("DELETE", f"/connections/{connection_id}").status_code == 202
    with memory_runtime.db.session() as session:
        version = session.get(Connection, connection_id).version

    again = tenant("DELETE", f"/connections/{connection_id}")
    assert again.status_code == 202 and again.get_json()["status"] == "revoked"
    assert len(celery.sent) == 1
    assert _events(memory_runtime, connection_id) == ["revoked"]
    with memory_runtime.db.session() as session:
        assert session.get(Connection, connection_id).version == version


def test_another_tenants_connection_is_404_and_stays_active(
        memory_runtime: Runtime, client: FlaskClient, celery: RecordingCelery) -> None:
    owner, stranger = Tenant(client, memory_runtime, "owner"), Tenant(client, memory_runtime, "stranger")
    _, connection_id = _connection(memory_runtime, owner)
    for tenant, id_ in ((stranger, connection_id), (owner, "conn_nope")):
        response = tenant("DELETE", f"/connections/{id_}")
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert celery.sent == []
    assert owner("GET", f"/connections/{connection_id}").get_json()["status"] == "active"
    assert _events(memory_runtime, connection_id) == []


def test_a_revoked_connection_cannot_be_reauthorized(memory_runtime: Runtime, client: FlaskClient) -> None:
    tenant = Tenant(client, memory_runtime, "acme")
    integration_id, connection_id = _connection(memory_runtime, tenant)
    assert tenant("DELETE", f"/connections/{connection_id}").status_code == 202
    response = tenant("POST", "/connect-sessions", json={"integration_id": integration_id, "end_user_id": "u",
                                                         "connection_id": connection_id})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "revoked"


def test_a_refresh_in_flight_when_the_connection_is_revoked_is_fenced_off(
        memory_runtime: Runtime, client: FlaskClient) -> None:
    tenant = Tenant(client, memory_runtime, "acme")
    _, connection_id = _connection(memory_runtime, tenant)
    with memory_runtime.db.session() as session:
        read_by_refresh = session.get(Connection, connection_id).version
    with memory_runtime.db.session() as session:
        assert mark_revoked(session, connection_id) is True
    with memory_runtime.db.session() as session:
        landed = fenced_update(session, connection_id, read_by_refresh, {"status": "active", "access_token_enc": "x"})
    assert landed is False
    with memory_runtime.db.session() as session:
        assert session.get(Connection, connection_id).status == "revoked"


def test_tokens_are_erased_only_from_a_revoked_connection_and_once(
        memory_runtime: Runtime, client: FlaskClient) -> None:
    tenant = Tenant(client, memory_runtime, "acme")
    _, connection_id = _connection(memory_runtime, tenant)
    with memory_runtime.db.session() as session:
        assert erase_tokens(session, connection_id) is False  # still active: nothing is erased
        assert session.get(Connection, connection_id, populate_existing=True).access_token_enc is not None
        assert mark_revoked(session, connection_id) is True
        assert mark_revoked(session, connection_id) is False
    with memory_runtime.db.session() as session:
        assert erase_tokens(session, connection_id) is True
        assert erase_tokens(session, connection_id) is False
    with memory_runtime.db.session() as session:
        erased = session.get(Connection, connection_id)
        assert (erased.access_token_enc, erased.refresh_token_enc, erased.status) == (None, None, "revoked")


def test_revocations_that_never_ran_are_queued_again_after_a_while(
        memory_runtime: Runtime, client: FlaskClient, celery: RecordingCelery) -> None:
    from datetime import timedelta

    from shared.models import utcnow
    from worker.revoke import LEFTOVER_AFTER, requeue_leftovers

    tenant = Tenant(client, memory_runtime, "acme")
    _, lost = _connection(memory_runtime, tenant)
    _, erased = _connection(memory_runtime, tenant)
    _, active = _connection(memory_runtime, tenant)
    with memory_runtime.db.session() as session:
        mark_revoked(session, lost)
        mark_revoked(session, erased)
    with memory_runtime.db.session() as session:
        erase_tokens(session, erased)
    later = utcnow() + LEFTOVER_AFTER + timedelta(seconds=1)

    assert requeue_leftovers(memory_runtime, now=utcnow()) == 0  # its task may still be running
    assert requeue_leftovers(memory_runtime, now=later) == 1
    assert [(s["name"], s["args"]) for s in celery.sent] == [(REVOKE_CONNECTION, [lost])]
    assert active not in str(celery.sent)
