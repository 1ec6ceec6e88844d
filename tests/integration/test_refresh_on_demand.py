"""On-demand refresh through the API: single flight, failure classes, bounded waits.
Real Redis, two worker processes, real HTTP to the sandbox."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared import refreshes
from shared.tokens import refresh_mark
from tests.integration.stack import Browser, Stack, Tenant, wait_for

pytestmark = pytest.mark.integration


def _due_connection(stack: Stack, tenant: Tenant, lifetime: int = 2) -> tuple[dict[str, Any], str]:
    """A connection whose first token lives `lifetime` seconds, so it is due after half
    of it; the provider's next tokens live an hour (the default), so a refreshed
    connection is never due again while a test looks at it."""
    client, integration = tenant.sandbox_integration()
    stack.knobs(client["client_id"], access_token_ttl=lifetime)
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded", attempt
    connection_id = attempt["connection_id"]
    stack.knobs(client["client_id"])
    assert stack.row(connection_id).lifetime_seconds == lifetime
    wait_for(lambda: time.time() >= stack.row(connection_id).expires_at.timestamp() - lifetime / 2,
             what="the connection to be due")
    return client, connection_id


def test_a_token_that_is_not_due_comes_straight_from_storage(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    first = tenant.call("GET", f"/connections/{connection_id}/token").json()
    second = tenant.call("GET", f"/connections/{connection_id}/token").json()
    assert first == second
    assert stack.provider_refreshes(client["client_id"]) == 0


def test_two_hundred_concurrent_token_and_refresh_calls_make_one_provider_call(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = _due_connection(stack, tenant)
    old = stack.row(connection_id)
    # Slow enough that every caller is inside the web before the refresh lands, even on
    # two busy cores (and below the HTTP timeout of 5 s).
    stack.knobs(client["client_id"], latency_ms=4500)
    barrier = threading.Barrier(200)

    def call(n: int) -> tuple[int, dict[str, Any]]:
        barrier.wait()
        method, path = ("POST", "refresh") if n % 2 else ("GET", "token")
        response = tenant.call(method, f"/connections/{connection_id}/{path}")
        return response.status_code, response.json()

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(call, range(200)))

    assert {status for status, _ in answers} == {200}
    tokens = {body["access_token"] for _, body in answers}
    assert len(tokens) == 1
    (new_token,) = tokens
    assert new_token != stack.runtime.cipher.decrypt(old.access_token_enc)
    assert stack.provider_refreshes(client["client_id"]) == 1
    assert stack.sandbox_stats(client["client_id"])["grants_revoked"] == 0
    assert stack.introspect(client, new_token)["active"] is True
    assert stack.row(connection_id).version == old.version + 1
    assert stack.row(connection_id).lifetime_seconds == 3600
    assert tenant.events(connection_id) == ["created", "refreshed"]


def test_a_forced_refresh_always_calls_the_provider_and_keeps_a_grant_that_rotates(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    tokens = [tenant.call("POST", f"/connections/{connection_id}/refresh").json()["access_token"] for _ in range(3)]
    assert len(set(tokens)) == 3
    assert stack.provider_refreshes(client["client_id"]) == 3
    assert stack.introspect(client, tokens[-1])["active"] is True
    assert stack.introspect(client, tokens[0])["active"] is True  # access tokens outlive a rotation
    assert stack.sandbox_stats(client["client_id"])["grants_revoked"] == 0


def test_a_provider_that_sends_no_new_refresh_token_keeps_the_old_one(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    before = stack.runtime.cipher.decrypt(stack.row(connection_id).refresh_token_enc)
    stack.knobs(client["client_id"], rotate_refresh_tokens=False)
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200
    assert stack.runtime.cipher.decrypt(stack.row(connection_id).refresh_token_enc) == before
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200
    assert stack.provider_refreshes(client["client_id"]) == 2


def test_transient_failures_are_retried_and_the_connection_recovers(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["503", "500"])
    response = tenant.call("POST", f"/connections/{connection_id}/refresh")
    assert response.status_code == 200, response.text
    assert stack.provider_refreshes(client["client_id"]) == 3
    connection = tenant.call("GET", f"/connections/{connection_id}").json()
    assert connection["status"] == "active"
    assert connection["refresh_failures"] == 0 and connection["last_error"] is None
    assert tenant.events(connection_id) == ["created", "refresh_failed", "refreshed", "recovered"]


def test_invalid_grant_marks_needs_reauth_at_once_without_retrying(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["invalid_grant"])
    response = tenant.call("POST", f"/connections/{connection_id}/refresh")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "needs_reauth"
    time.sleep(1.5)  # time enough for a retry, were there one
    assert stack.provider_refreshes(client["client_id"]) == 1
    connection = tenant.call("GET", f"/connections/{connection_id}").json()
    assert connection["status"] == "needs_reauth" and "invalid_grant" in connection["last_error"]
    assert tenant.events(connection_id) == ["created", "needs_reauth"]
    token = tenant.call("GET", f"/connections/{connection_id}/token")
    assert token.status_code == 409 and token.json()["error"]["code"] == "needs_reauth"


def test_unauthorized_client_also_means_needs_reauth(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["unauthorized_client"])
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 409
    assert stack.row(connection_id).status == "needs_reauth"


def test_a_429_is_retried_after_its_retry_after(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["429"], retry_after=2)
    started = time.monotonic()
    response = tenant.call("POST", f"/connections/{connection_id}/refresh")
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert elapsed >= 2.0
    assert stack.provider_refreshes(client["client_id"]) == 2
    assert tenant.events(connection_id) == ["created", "refresh_failed", "refreshed", "recovered"]


def test_a_refresh_slower_than_the_wait_answers_503_with_retry_after(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["503", "503", "503", "503", "503"])
    # TOKEN_WAIT_SECONDS is 10; the backoff of five failures takes longer.
    response = tenant.call("POST", f"/connections/{connection_id}/refresh")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "refresh_pending"
    assert response.headers["Retry-After"] == "1"
    # The stored token is still there for a plain read.
    assert tenant.call("GET", f"/connections/{connection_id}/token").status_code == 200


def test_a_connection_needing_reauth_is_reauthorized_in_place(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["invalid_grant"])
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 409
    integration_id = stack.row(connection_id).integration_id

    connect_url = tenant.connect_url(integration_id, connection_id=connection_id)
    attempt = Browser(stack).connect(connect_url)
    assert attempt == {"status": "succeeded", "connection_id": connection_id}
    connection = tenant.call("GET", f"/connections/{connection_id}").json()
    assert connection["status"] == "active" and connection["last_error"] is None
    assert tenant.events(connection_id) == ["created", "needs_reauth", "reauthorized"]
    token = tenant.call("GET", f"/connections/{connection_id}/token").json()["access_token"]
    assert stack.introspect(client, token)["active"] is True
    assert len(tenant.call("GET", "/connections").json()["data"]) == 1


def test_a_long_retry_after_is_not_retried_early_by_anyone(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stack.knobs(client["client_id"], fail=["429"], retry_after=120)
    seen = refresh_mark(stack.row(connection_id))
    assert refreshes.request_refresh(stack.runtime.redis, stack.runtime.celery, connection_id, seen)
    wait_for(lambda: stack.row(connection_id).refresh_failures == 1, what="the 429 to be recorded")
    time.sleep(2)
    assert stack.provider_refreshes(client["client_id"]) == 1
    marker = refreshes.queued_key(connection_id)
    assert 100 < stack.runtime.redis.ttl(marker) <= 120, "held for the Retry-After"
    assert not refreshes.request_refresh(stack.runtime.redis, stack.runtime.celery, connection_id, seen)
    assert stack.row(connection_id).status == "active"
    assert tenant.events(connection_id) == ["created", "refresh_failed"]
