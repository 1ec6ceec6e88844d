"""The token hot path in one process (Flask test client, fakeredis, in-memory SQLite):
served from memory, and dropped from memory by the announcements."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, update

from shared import refreshes
from shared.crypto import digest
from shared.models import Connection, Integration, Tenant, utcnow
from shared.runtime import Runtime
from shared.tenants import announce_key_change, create_tenant
from tests.integration.stack import wait_for
from web import create_app


@pytest.fixture
def app(memory_runtime: Runtime) -> Iterator[Flask]:
    app = create_app(runtime_=memory_runtime)
    updates = app.extensions["updates"]
    updates.connections.ttl = updates.api_keys.ttl = 60  # only an announcement drops an entry here
    updates.start(wait=5)
    yield app


@pytest.fixture
def seeded(memory_runtime: Runtime) -> dict[str, str]:
    rt = memory_runtime
    with rt.db.session() as session:
        tenant, key = create_tenant(session, "acme")
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c", client_secret_enc="x",
                                  scopes=[], authorize_url="https://idp.example/a", token_url="https://idp.example/t")
        session.add(integration)
        session.flush()
        connection = Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=["a"],
                                access_token_enc=rt.cipher.encrypt("at-1"), refresh_token_enc=rt.cipher.encrypt("rt"),
                                expires_at=utcnow() + timedelta(hours=1), lifetime_seconds=3600)
        session.add(connection)
    return {"key": key, "tenant_id": tenant.id, "connection_id": connection.id}


def _token(app: Flask, seeded: dict[str, str]) -> Any:
    return app.test_client().get(f"/api/v1/connections/{seeded['connection_id']}/token",
                                 headers={"Authorization": f"Bearer {seeded['key']}"})


def _write(rt: Runtime, model: Any, id_: str, **values: Any) -> None:
    """A write that announces nothing."""
    with rt.db.session() as session:
        session.execute(update(model).where(model.id == id_).values(**values))


def test_a_token_that_is_not_due_is_served_without_the_database_or_redis(
        app: Flask, seeded: dict[str, str], memory_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _token(app, seeded).get_json()["access_token"] == "at-1"  # reads, and keeps
    statements: list[str] = []
    event.listen(memory_runtime.db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    commands: list[Any] = []
    real = memory_runtime.redis.execute_command
    monkeypatch.setattr(memory_runtime.redis, "execute_command",
                        lambda *args, **kwargs: commands.append(args) or real(*args, **kwargs))
    response = _token(app, seeded)
    assert response.status_code == 200 and response.get_json()["access_token"] == "at-1"
    assert statements == [] and commands == []


def test_an_announced_connection_is_read_again(app: Flask, seeded: dict[str, str], memory_runtime: Runtime) -> None:
    assert _token(app, seeded).status_code == 200
    _write(memory_runtime, Connection, seeded["connection_id"], status="revoked")
    assert _token(app, seeded).status_code == 200, "unannounced, the cached row answers"
    refreshes.announce(memory_runtime.redis, seeded["connection_id"])
    wait_for(lambda: _token(app, seeded).status_code == 409, timeout=5, what="the revocation to be seen")
    assert _token(app, seeded).get_json()["error"]["code"] == "revoked"


def test_an_announced_tenant_loses_its_cached_keys(app: Flask, seeded: dict[str, str],
                                                   memory_runtime: Runtime) -> None:
    assert _token(app, seeded).status_code == 200
    _write(memory_runtime, Tenant, seeded["tenant_id"], api_key_hash=digest("ok_live_new"))
    assert _token(app, seeded).status_code == 200, "unannounced, the cached key answers"
    announce_key_change(memory_runtime.redis, seeded["tenant_id"])
    wait_for(lambda: _token(app, seeded).status_code == 401, timeout=5, what="the old key to be refused")


def test_another_tenants_connection_is_404_from_the_cache_too(app: Flask, seeded: dict[str, str],
                                                             memory_runtime: Runtime) -> None:
    assert _token(app, seeded).status_code == 200
    with memory_runtime.db.session() as session:
        _, other_key = create_tenant(session, "other")
    response = _token(app, {**seeded, "key": other_key})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
