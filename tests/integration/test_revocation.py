"""Disconnect: `DELETE /api/v1/connections/{id}` revokes at the provider (RFC 7009) and
erases the stored tokens. Real Redis, worker processes, real HTTP to the sandbox."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from shared.queue import DEFAULT_QUEUE, INTERACTIVE_QUEUE, REVOKE_CONNECTION
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def _erased(stack: Stack, connection_id: str) -> bool:
    row = stack.row(connection_id)
    return row.access_token_enc is None and row.refresh_token_enc is None


def test_a_disconnect_revokes_both_tokens_at_the_provider_and_erases_them(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stranger = stack.tenant("stranger").call("DELETE", f"/connections/{connection_id}")
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "not_found"
    assert stack.row(connection_id).status == "active"
    access_token = tenant.call("GET", f"/connections/{connection_id}/token").json()["access_token"]
    refresh_token = stack.runtime.cipher.decrypt(stack.row(connection_id).refresh_token_enc)
    assert stack.introspect(client, refresh_token)["active"] is True

    response = tenant.call("DELETE", f"/connections/{connection_id}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "revoked"
    refused = tenant.call("GET", f"/connections/{connection_id}/token")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "revoked"

    wait_for(lambda: _erased(stack, connection_id), timeout=30, what="the tokens to be erased")
    assert stack.introspect(client, access_token) == {"active": False}
    assert stack.introspect(client, refresh_token) == {"active": False}
    stats = stack.sandbox_stats(client["client_id"])
    assert stats["revocations"] == 2 and stats["grants_revoked"] == 1
    assert tenant.call("GET", f"/connections/{connection_id}").json()["status"] == "revoked"
    assert tenant.events(connection_id) == ["created", "revoked"]
    forced = tenant.call("POST", f"/connections/{connection_id}/refresh")
    assert forced.status_code == 409 and forced.json()["error"]["code"] == "revoked"
    assert stack.provider_refreshes(client["client_id"]) == 0


class _Refusing(BaseHTTPRequestHandler):
    """A revocation endpoint that answers 503 to every call and remembers each."""

    calls: list[tuple[str, dict[str, list[str]]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length", 0))
        _Refusing.calls.append((self.headers.get("Authorization", ""), parse_qs(self.rfile.read(length).decode())))
        body = json.dumps({"error": "temporarily_unavailable"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Refusing.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/revoke"
    server.shutdown()


@pytest.fixture(scope="module")
def private_stack(stack_factory: Callable[..., Stack]) -> Iterator[Stack]:
    """A system whose integrations may name loopback URLs (the refusing provider's)."""
    yield stack_factory(workers=1, ALLOW_PRIVATE_PROVIDER_URLS="1")


def test_a_provider_that_fails_every_revocation_still_ends_with_the_tokens_erased(
        private_stack: Stack, refusing_provider: str) -> None:
    from worker.revoke import MAX_TRIES

    stack = private_stack
    tenant = stack.tenant()
    # A generic OAuth 2 integration: the sandbox's endpoints, the refusing revocation endpoint.
    sandbox = f"{stack.base_url}/sandbox/oauth"
    _, connection_id = tenant.connected(provider="oauth2", authorize_url=f"{sandbox}/authorize",
                                        token_url=f"{sandbox}/token", revoke_url=refusing_provider)
    refresh_token = stack.runtime.cipher.decrypt(stack.row(connection_id).refresh_token_enc)
    access_token = stack.runtime.cipher.decrypt(stack.row(connection_id).access_token_enc)

    assert tenant.call("DELETE", f"/connections/{connection_id}").status_code == 202
    wait_for(lambda: _erased(stack, connection_id), timeout=90, interval=0.2, what="the tokens to be erased")

    # Every try posted the refresh token first, then the access token, authenticated.
    assert len(_Refusing.calls) == 2 * MAX_TRIES
    for n, (authorization, form) in enumerate(_Refusing.calls):
        hint, token = (("refresh_token", refresh_token), ("access_token", access_token))[n % 2]
        assert form == {"token": [token], "token_type_hint": [hint]}
        assert authorization.startswith("Basic ")
    assert tenant.events(connection_id) == ["created", "revoked"]


def _queued(stack: Stack, queue: str, task: str) -> list[list[Any]]:
    """The args of the messages of one task waiting in one queue."""
    import base64

    found = []
    for raw in stack.runtime.redis.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        if envelope["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(envelope["body"]))[0])
    return found


@pytest.fixture(scope="module")
def interactive_only(stack_factory: Callable[..., Stack]) -> Iterator[Stack]:
    """A system whose only worker reads the interactive queue: revocations wait in the other."""
    stack = stack_factory(workers=0)
    stack.start_worker("interactive", queues=INTERACTIVE_QUEUE)
    yield stack


def test_a_second_delete_answers_202_and_changes_nothing(interactive_only: Stack) -> None:
    stack = interactive_only
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    assert tenant.call("DELETE", f"/connections/{connection_id}").status_code == 202
    revoked = stack.row(connection_id)
    # Nothing has reached the provider yet, but no token is served any more.
    assert revoked.status == "revoked" and revoked.access_token_enc is not None
    assert tenant.call("GET", f"/connections/{connection_id}/token").status_code == 409

    again = tenant.call("DELETE", f"/connections/{connection_id}")
    assert again.status_code == 202 and again.json()["status"] == "revoked"
    assert stack.row(connection_id).version == revoked.version
    assert tenant.events(connection_id) == ["created", "revoked"]
    assert _queued(stack, DEFAULT_QUEUE, REVOKE_CONNECTION) == [[connection_id]]

    default = stack.start_worker("default", queues=DEFAULT_QUEUE)
    try:
        wait_for(lambda: _erased(stack, connection_id), timeout=30, what="the tokens to be erased")
    finally:
        default.stop()  # revocations wait in the queue again for the next test
    assert stack.sandbox_stats(client["client_id"])["revocations"] == 2


def test_a_refresh_in_flight_at_the_delete_is_fenced_off_and_its_answer_dropped(interactive_only: Stack) -> None:
    stack = interactive_only
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    stored = stack.row(connection_id)
    access_token = stack.runtime.cipher.decrypt(stored.access_token_enc)
    stack.knobs(client["client_id"], latency_ms=3000)  # the provider holds the refresh 3 s

    with ThreadPoolExecutor(1) as pool:
        forced = pool.submit(tenant.call, "POST", f"/connections/{connection_id}/refresh")
        wait_for(lambda: stack.provider_refreshes(client["client_id"]) == 1, timeout=20,
                 what="the refresh to reach the provider")
        assert tenant.call("DELETE", f"/connections/{connection_id}").status_code == 202
        answer = forced.result()
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "revoked"
    wait_for(lambda: stack.sandbox_stats(client["client_id"])["refresh_success"] == 1, timeout=20,
             what="the provider to answer the refresh")
    worker = next(p for p in stack.processes if p.name == "interactive")
    wait_for(lambda: "lost its lock" in worker.output(), timeout=20, what="the refresh to drop its answer")

    row = stack.row(connection_id)
    assert row.status == "revoked" and row.version == stored.version + 1  # only the DELETE wrote
    assert row.access_token_enc == stored.access_token_enc  # the refreshed token was never stored
    assert tenant.events(connection_id) == ["created", "revoked"]

    default = stack.start_worker("default", queues=DEFAULT_QUEUE)
    try:
        wait_for(lambda: _erased(stack, connection_id), timeout=30, what="the tokens to be erased")
    finally:
        default.stop()
    # Revoking the spent refresh token took its grant, and the tokens the dropped refresh got, with it.
    assert stack.introspect(client, access_token) == {"active": False}
    assert stack.sandbox_stats(client["client_id"])["grants_revoked"] == 1


def test_no_token_is_answered_after_the_delete_was(stack: Stack) -> None:
    tenant = stack.tenant()
    _, connection_id = tenant.connected()
    deleted_at: list[float] = []
    stop = threading.Event()

    def ask() -> list[tuple[float, int]]:
        answers = []
        while not stop.is_set():
            started = time.monotonic()
            answers.append((started, tenant.call("GET", f"/connections/{connection_id}/token").status_code))
        return answers

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask) for _ in range(8)]
        time.sleep(1)
        response = tenant.call("DELETE", f"/connections/{connection_id}")
        deleted_at.append(time.monotonic())
        time.sleep(1)
        stop.set()
        answers = [answer for future in futures for answer in future.result()]
    assert response.status_code == 202
    before = [status for started, status in answers if started < deleted_at[0]]
    after = [status for started, status in answers if started > deleted_at[0]]
    assert 200 in before and after
    assert set(after) == {409}
