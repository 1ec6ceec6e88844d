"""A worker killed while the provider holds a code exchange: the redelivered task never
posts the code again, and the browser's attempt ends instead of polling forever."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.integration.conftest import StackFactory
from tests.integration.listener import Listener, Reply
from tests.integration.stack import Browser, Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crash_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """One worker to kill; a visibility timeout short enough to see the redelivery; a
    loopback listener may stand in for the provider."""
    stack = stack_factory(workers=1, ALLOW_PRIVATE_PROVIDER_URLS="1", HTTP_TIMEOUT_SECONDS="6",
                          REFRESH_LOCK_SECONDS="7", TASK_TIME_LIMIT_SECONDS="8",
                          BROKER_VISIBILITY_TIMEOUT_SECONDS="10")
    yield stack
    stack.stop_all()


def test_a_worker_killed_mid_exchange_never_posts_the_code_twice_and_the_attempt_fails(crash_stack: Stack) -> None:
    stack = crash_stack
    tenant = stack.tenant()
    token = Reply.json({"access_token": "a" * 32, "refresh_token": "r" * 32, "expires_in": 3600})
    with Listener(token) as provider:
        created = tenant.call("POST", "/integrations", json={
            "provider": "oauth2", "client_id": "client-1", "client_secret": "secret-1", "scopes": ["read"],
            "authorize_url": f"{provider.url}/authorize", "token_url": f"{provider.url}/token"})
        assert created.status_code == 201, created.text
        browser = Browser(stack)
        authorize_url = browser.open_connect(tenant.connect_url(created.json()["id"]))
        state = dict(parse_qsl(urlsplit(authorize_url).query))["state"]
        provider.release.clear()  # the token endpoint holds every request until released

        code = "code-" + "c" * 27
        response = browser.callback(f"{stack.base_url}/oauth/callback?{urlencode({'code': code, 'state': state})}")
        assert response.status_code == 303, response.text
        wait_for(lambda: provider.received, what="the exchange to reach the provider")
        victim = stack.processes[-1]
        assert victim.name == "w1"
        victim.stop(signal.SIGKILL)
        provider.release.set()  # the answer goes to a dead worker

        rescuer = stack.start_worker("rescuer")
        try:
            attempt = browser.attempt(response.headers["Location"], timeout=60)
        except AssertionError as timed_out:
            r = stack.runtime.redis
            raise AssertionError(f"no redelivery: unacked={r.hgetall('unacked')!r}, "
                                 f"mutex ttl={r.ttl('unacked_mutex')}\n{rescuer.output()[-3000:]}") from timed_out
        assert attempt == {"status": "failed", "error": "exchange_interrupted"}
        # Only the redelivered task ends the attempt: it found the code already taken.

        grants = [r.form().get("grant_type") for r in provider.received]
        assert grants == ["authorization_code"], "the code is posted exactly once"
        assert provider.received[0].form()["code"] == code
    assert tenant.call("GET", "/connections").json()["data"] == []
