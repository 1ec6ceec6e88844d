"""The egress guard where it matters: in the worker that calls the URLs tenants chose.

Each test runs a listener on loopback and shows it receives nothing it should not."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from shared import refreshes
from shared.models import Connection
from shared.tokens import refresh_mark
from tests.integration.conftest import StackFactory
from tests.integration.listener import Listener, Reply
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration

NOT_PUBLIC = re.compile(r"not (a )?public|non-public|forbidden|private|loopback", re.IGNORECASE)
PUBLIC_TOKEN_URL = "https://93.184.215.14/oauth/token"  # an address literal: no DNS needed to judge it


def _refresh_and_wait_for_failure(stack: Stack, connection_id: str) -> Connection:
    """Force a refresh through the queue, as the API does, and wait for its outcome
    (any write bumps the version); check that it failed."""
    before = stack.row(connection_id)
    assert refreshes.request_refresh(stack.runtime.redis, stack.runtime.celery, connection_id,
                                     refresh_mark(before))
    after: Connection = wait_for(lambda: (row := stack.row(connection_id)).version > before.version and row,
                                 timeout=30, what="the refresh's outcome")
    assert after.last_error, "the refresh should have failed"
    return after


def test_a_refresh_never_reaches_a_loopback_token_url_when_private_urls_are_off(stack: Stack) -> None:
    tenant = stack.tenant()
    with Listener(Reply.json({"access_token": "stolen", "expires_in": 3600})) as listener:
        connection_id = tenant.stored_connection(tenant.stored_integration(f"{listener.url}/token"))
        failed = _refresh_and_wait_for_failure(stack, connection_id)
        assert listener.received == [], "the worker must not call a loopback token URL"
        assert NOT_PUBLIC.search(failed.last_error), failed.last_error
        assert stack.runtime.cipher.decrypt(failed.access_token_enc) == "access-token-1"
        api = tenant.call("GET", f"/connections/{connection_id}").json()
        assert NOT_PUBLIC.search(api["last_error"]), api


def test_a_private_revoke_url_is_refused_by_the_api(stack: Stack) -> None:
    tenant = stack.tenant()
    with Listener() as listener:
        loopback = listener.url.replace("http://", "https://")  # https, so only the address is wrong
        for revoke_url in (f"{loopback}/revoke", "https://10.0.0.5/revoke", "https://169.254.169.254/latest"):
            response = tenant.call("POST", "/integrations", json={
                "provider": "oauth2", "client_id": "c", "client_secret": "s", "scopes": [],
                "authorize_url": "https://93.184.215.14/authorize", "token_url": PUBLIC_TOKEN_URL,
                "revoke_url": revoke_url})
            assert response.status_code == 422, (revoke_url, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_fields"
            assert "revoke_url" in error["message"] and NOT_PUBLIC.search(error["message"]), error
        assert listener.received == []
    assert tenant.call("GET", "/integrations").json()["data"] == []


def test_a_sandbox_integration_cannot_point_its_token_url_elsewhere(stack: Stack) -> None:
    tenant = stack.tenant()
    with Listener(Reply.json({"access_token": "stolen", "expires_in": 3600})) as listener:
        client = stack.sandbox_client()
        response = tenant.call("POST", "/integrations", json={
            "provider": "sandbox", "client_id": client["client_id"], "client_secret": client["client_secret"],
            "scopes": [], "token_url": f"{listener.url}/token"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_fields"
        # One stored before the rule (or written around the API): a sandbox integration
        # always calls the sandbox's own URLs, so the refresh never reaches the listener.
        connection_id = tenant.stored_connection(tenant.stored_integration(f"{listener.url}/token",
                                                                           provider="sandbox"))
        before = stack.row(connection_id)
        assert refreshes.request_refresh(stack.runtime.redis, stack.runtime.celery, connection_id,
                                         refresh_mark(before))
        wait_for(lambda: stack.row(connection_id).version > before.version, timeout=30,
                 what="the refresh's outcome")
        assert listener.received == []


@pytest.fixture(scope="module")
def private_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """Private provider URLs allowed (an OAuth server on a private network): loopback
    listeners can then stand in for providers."""
    stack = stack_factory(workers=1, ALLOW_PRIVATE_PROVIDER_URLS="1")
    yield stack
    stack.stop_all()


def test_a_providers_redirect_to_an_internal_address_is_not_followed(private_stack: Stack) -> None:
    stack = private_stack
    tenant = stack.tenant()
    with Listener(Reply.json({"access_token": "stolen", "expires_in": 3600})) as internal, \
            Listener(Reply(302, {"Location": f"{internal.url}/admin/token"})) as provider:
        created = tenant.call("POST", "/integrations", json={
            "provider": "oauth2", "client_id": "c", "client_secret": "s", "scopes": [],
            "authorize_url": f"{provider.url}/authorize", "token_url": f"{provider.url}/token"})
        assert created.status_code == 201, created.text
        connection_id = tenant.stored_connection(created.json()["id"])
        failed = _refresh_and_wait_for_failure(stack, connection_id)
        assert [r.path for r in provider.received][:1] == ["/token"]
        assert provider.received[0].form()["grant_type"] == "refresh_token"
        assert internal.received == [], "a redirect must never be followed"
        assert "302" in failed.last_error
        assert stack.runtime.cipher.decrypt(failed.access_token_enc) == "access-token-1"
