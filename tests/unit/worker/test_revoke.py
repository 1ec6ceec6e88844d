"""`revoke_connection` without a provider to call: whatever happens, the tokens end erased."""
from __future__ import annotations

import pytest

from shared.models import Connection, Integration, Tenant, new_id
from shared.refreshes import UPDATES_CHANNEL
from shared.revocations import mark_revoked
from shared.runtime import Runtime
from worker import app, revoke


@pytest.fixture(autouse=True)
def _runtime(monkeypatch: pytest.MonkeyPatch, memory_runtime: Runtime) -> None:
    """The task runs in this process, on the test's runtime; the Celery app it belongs
    to is configured from settings of the test's own."""
    monkeypatch.setenv("SECRET_KEY", memory_runtime.settings.secret_key)
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", memory_runtime.settings.token_encryption_keys)
    monkeypatch.setattr(app, "runtime", lambda: memory_runtime)


def _revoked(rt: Runtime, revoke_url: str | None, access_enc: str, refresh_enc: str) -> str:
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=new_id("hash"))
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c",
                                  client_secret_enc=rt.cipher.encrypt("s"), scopes=[],
                                  authorize_url="https://idp.example/a", token_url="https://idp.example/t",
                                  revoke_url=revoke_url)
        session.add(integration)
        session.flush()
        connection = Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                                access_token_enc=access_enc, refresh_token_enc=refresh_enc)
        session.add(connection)
        session.flush()
        mark_revoked(session, connection.id)
    return connection.id


def _tokens(rt: Runtime, connection_id: str) -> tuple[str | None, str | None]:
    with rt.db.session() as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        return row.access_token_enc, row.refresh_token_enc


def test_without_a_revoke_url_the_tokens_are_erased_and_announced(memory_runtime: Runtime) -> None:
    rt = memory_runtime
    connection_id = _revoked(rt, None, rt.cipher.encrypt("at"), rt.cipher.encrypt("rt"))
    pubsub = rt.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(UPDATES_CHANNEL)
    assert revoke.revoke_connection.run(connection_id) == "erased"
    assert _tokens(rt, connection_id) == (None, None)
    messages = [pubsub.get_message(timeout=0.2) for _ in range(3)]
    assert [m["data"] for m in messages if m] == [connection_id.encode()]
    assert revoke.revoke_connection.run(connection_id) == "already_erased"


def test_tokens_under_no_known_key_are_erased_without_a_call(memory_runtime: Runtime) -> None:
    # Were a call made, the closed port would fail it transiently and the task would retry.
    connection_id = _revoked(memory_runtime, "http://127.0.0.1:9/revoke", "not-a-token", "not-a-token")
    assert revoke.revoke_connection.run(connection_id) == "erased"
    assert _tokens(memory_runtime, connection_id) == (None, None)


def test_an_active_connection_is_left_alone(memory_runtime: Runtime) -> None:
    rt = memory_runtime
    connection_id = _revoked(rt, None, rt.cipher.encrypt("at"), rt.cipher.encrypt("rt"))
    with rt.db.session() as session:
        session.get(Connection, connection_id).status = "active"
    assert revoke.revoke_connection.run(connection_id) == "not_revoked"
    assert None not in _tokens(rt, connection_id)
