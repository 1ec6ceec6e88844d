"""Rate limits on a running system (gunicorn with two processes sharing the counters in
Redis): 429 with Retry-After for both limits, and service as usual with Redis stopped."""
from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests

from devstack.local_redis import ensure_redis
from devstack.ports import free_port
from shared.models import Connection, Integration, utcnow
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def test_both_limits_answer_429_with_retry_after(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(workers=0, BROWSER_RATE_LIMIT="5/hour", API_RATE_LIMIT="5/hour")
    tenant, other = stack.tenant("busy"), stack.tenant("quiet")
    answers = [tenant.call("GET", "/integrations").status_code for _ in range(5)]
    assert answers == [200] * 5
    refused = tenant.call("GET", "/connections")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert other.call("GET", "/integrations").status_code == 200

    link = f"{stack.base_url}/connect/not-a-link"
    assert [requests.get(link, timeout=5).status_code for _ in range(5)] == [404] * 5
    page = requests.get(f"{stack.base_url}/oauth/callback?state=x", timeout=5)
    assert page.status_code == 429
    assert page.headers["Content-Type"].startswith("text/html") and "Too many requests" in page.text
    assert 1 <= int(page.headers["Retry-After"]) <= 3600


def _stopped(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_service_keeps_serving_with_its_redis_stopped(stack_factory: Callable[..., Stack]) -> None:
    private = ensure_redis(f"redis://127.0.0.1:{free_port()}/0")  # this test's own, to stop
    try:
        stack = stack_factory(workers=0, REDIS_URL=private.url, BROWSER_RATE_LIMIT="1000/hour",
                              API_RATE_LIMIT="1000/hour")
        tenant = stack.tenant()
        _, integration = tenant.sandbox_integration()
        with stack.runtime.db.session() as session:
            row = session.get(Integration, integration["id"])
            assert row is not None
            connection = Connection(tenant_id=tenant.id, integration_id=row.id, end_user_id="u", scopes=[],
                                    access_token_enc=stack.runtime.cipher.encrypt("at-0123456789abcdef"),
                                    expires_at=utcnow() + timedelta(hours=2), lifetime_seconds=7200)
            session.add(connection)
        paths = [f"/connections/{connection.id}", f"/connections/{connection.id}/token", "/integrations"]
        assert [tenant.call("GET", path).status_code for path in paths] == [200, 200, 200]

        private.stop()
        assert _stopped(private.url)
        for _ in range(3):
            assert [tenant.call("GET", path, timeout=10).status_code for path in paths] == [200, 200, 200]
            assert requests.get(f"{stack.base_url}/connect/not-a-link", timeout=10).status_code == 404
        assert tenant.call("GET", f"/connections/{connection.id}/token").json()["access_token"] == \
            "at-0123456789abcdef"
    finally:
        private.stop()
