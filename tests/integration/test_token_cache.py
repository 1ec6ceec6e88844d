"""The token hot path across web processes: gunicorn with two processes, real Redis and a
real database. Every process serves a token that is not due from its memory; an
announcement stops a revoked connection or a replaced API key on all of them within
1 s, and TOKEN_CACHE_SECONDS bounds a missed announcement."""
from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import update

from shared import refreshes
from shared.crypto import digest
from shared.models import Connection, Integration, utcnow
from shared.models import Tenant as TenantRow
from shared.tenants import announce_key_change
from shared.tokens import fenced_update
from tests.integration.conftest import StackFactory
from tests.integration.stack import Stack, Tenant, wait_for
from web.updates import CHANNELS

pytestmark = pytest.mark.integration

PROCESSES = 2
CALLS = 30  # each on a new TCP connection, so the kernel spreads them over the processes


@pytest.fixture(scope="module")
def cached(stack_factory: StackFactory) -> Stack:
    """No worker: nothing here needs one; entries live far longer than any test step."""
    return stack_factory(workers=0, TOKEN_CACHE_SECONDS="60")


@pytest.fixture(scope="module")
def short_lived(stack_factory: StackFactory) -> Stack:
    return stack_factory(workers=0, TOKEN_CACHE_SECONDS="2")


def _connection(stack: Stack, access_token: str = "at-1") -> tuple[Tenant, str]:
    """A tenant and a connection whose token is not due, inserted directly."""
    tenant = stack.tenant()
    rt = stack.runtime
    with rt.db.session() as session:
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c",
                                  client_secret_enc=rt.cipher.encrypt("s"), scopes=[],
                                  authorize_url="https://idp.example/a", token_url="https://idp.example/t")
        session.add(integration)
        session.flush()
        connection = Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                                access_token_enc=rt.cipher.encrypt(access_token),
                                refresh_token_enc=rt.cipher.encrypt("rt"),
                                expires_at=utcnow() + timedelta(hours=1), lifetime_seconds=3600)
        session.add(connection)
    return tenant, connection.id


def _answers(tenant: Tenant, connection_id: str) -> list[str]:
    """CALLS answers: the token, or the status code."""
    answers = []
    for _ in range(CALLS):
        response = tenant.call("GET", f"/connections/{connection_id}/token")
        answers.append(response.json()["access_token"] if response.ok else str(response.status_code))
    return answers


def _listeners(stack: Stack) -> list[str]:
    """The Redis clients of this stack's web processes that listen to both channels."""
    own_db = urlsplit(stack.env["REDIS_URL"]).path.strip("/")
    return [client["id"] for client in stack.runtime.redis.client_list(_type="pubsub")
            if client["db"] == own_db and client["sub"] == str(len(CHANNELS))]


def _warm(stack: Stack, tenant: Tenant, connection_id: str) -> None:
    """Until every process listens to both channels, then fill their caches."""
    wait_for(lambda: _answers(tenant, connection_id) and len(_listeners(stack)) == PROCESSES, timeout=30,
             what="every web process to subscribe")
    assert set(_answers(tenant, connection_id)) == {"at-1"}


def test_a_revoked_connection_stops_on_every_process_within_a_second(cached: Stack) -> None:
    tenant, connection_id = _connection(cached)
    _warm(cached, tenant, connection_id)
    with cached.runtime.db.session() as session:
        assert fenced_update(session, connection_id, 1, {"status": "revoked"})
    assert "at-1" in _answers(tenant, connection_id), "answered from memory, not from the write"
    announced = time.monotonic()
    refreshes.announce(cached.runtime.redis, connection_id)
    time.sleep(max(0.0, announced + 1.0 - time.monotonic()))
    assert set(_answers(tenant, connection_id)) == {"409"}


def test_a_replaced_api_key_stops_on_every_process_within_a_second(cached: Stack) -> None:
    tenant, connection_id = _connection(cached)
    _warm(cached, tenant, connection_id)
    with cached.runtime.db.session() as session:
        session.execute(update(TenantRow).where(TenantRow.id == tenant.id)
                        .values(api_key_hash=digest("ok_live_replaced")))
    assert "at-1" in _answers(tenant, connection_id), "answered from memory, not from the write"
    announced = time.monotonic()
    announce_key_change(cached.runtime.redis, tenant.id)
    time.sleep(max(0.0, announced + 1.0 - time.monotonic()))
    assert set(_answers(tenant, connection_id)) == {"401"}


def test_a_lost_subscription_clears_the_caches(cached: Stack) -> None:
    tenant, connection_id = _connection(cached)
    _warm(cached, tenant, connection_id)
    redis = cached.runtime.redis
    with cached.runtime.db.session() as session:
        assert fenced_update(session, connection_id, 1, {"access_token_enc": cached.runtime.cipher.encrypt("at-2")})
    assert "at-1" in _answers(tenant, connection_id), "answered from memory, not from the write"
    listeners = _listeners(cached)
    assert len(listeners) == PROCESSES
    for client_id in listeners:
        redis.client_kill_filter(_id=client_id)
    wait_for(lambda: set(_answers(tenant, connection_id)) == {"at-2"}, timeout=10,
             what="every process to forget what it kept before it lost Redis")
    wait_for(lambda: len(_listeners(cached)) == PROCESSES, timeout=10, what="every process to subscribe again")


def test_the_cache_lifetime_bounds_a_missed_announcement(short_lived: Stack) -> None:
    tenant, connection_id = _connection(short_lived)
    _warm(short_lived, tenant, connection_id)
    with short_lived.runtime.db.session() as session:
        assert fenced_update(session, connection_id, 1, {"status": "revoked"})  # and nothing announced
    written = time.monotonic()
    time.sleep(max(0.0, written + 2.5 - time.monotonic()))
    assert set(_answers(tenant, connection_id)) == {"409"}
