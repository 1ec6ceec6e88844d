"""The client package against the running system: oauth-keeper's API and the sandbox's
respond.io-like API, all over real HTTP, with the refreshes done by real workers."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest
import requests
from oauth_keeper_client import Keeper, NeedsReauth, NotFound, RespondIO, RespondIOError, RetryPolicy, TokenRejected
from requests.adapters import HTTPAdapter

from tests.integration.stack import BIN, Stack, Tenant

pytestmark = pytest.mark.integration

FAST = RetryPolicy(backoff=0.05, max_backoff=0.2)


class Timeline(HTTPAdapter):
    """A transport that notes when each request leaves and each answer arrives."""

    def __init__(self) -> None:
        super().__init__(pool_maxsize=64)
        self.events: list[tuple[str, float, str, int | None, str | None]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.events.append(("send", time.monotonic(), f"{request.method} {request.path_url}", None, None))
        response = super().send(request, **kwargs)
        self.events.append(("answer", time.monotonic(), f"{request.method} {request.path_url}",
                            response.status_code, response.headers.get("Retry-After")))
        return response

    def statuses(self, fragment: str = "") -> list[int]:
        return [status for kind, _, what, status, _ in self.events if kind == "answer" and fragment in what
                and status is not None]

    def sends(self, fragment: str = "") -> int:
        return sum(1 for kind, _, what, _, _ in self.events if kind == "send" and fragment in what)


def session_over(timeline: Timeline) -> requests.Session:
    session = requests.Session()
    session.mount("http://", timeline)
    return session


@pytest.fixture()
def tenant(stack: Stack) -> Tenant:
    return stack.tenant()


@pytest.fixture()
def connected(tenant: Tenant) -> tuple[dict[str, Any], str]:
    return tenant.connected()


def keeper_of(stack: Stack, tenant: Tenant, timeline: Timeline | None = None) -> Keeper:
    return Keeper(stack.base_url, tenant.api_key, session=session_over(timeline) if timeline else None)


def revoke_at_provider(stack: Stack, client: dict[str, Any], token: str) -> None:
    response = requests.post(f"{stack.base_url}/sandbox/oauth/revoke", data={"token": token},
                             auth=(client["client_id"], client["client_secret"]), timeout=5)
    assert response.status_code == 200, response.text


def test_the_client_finds_the_api_through_the_integration(stack: Stack, tenant: Tenant,
                                                         connected: tuple[dict[str, Any], str]) -> None:
    _, connection_id = connected
    keeper = keeper_of(stack, tenant)
    assert RespondIO(keeper, connection_id).base_url == f"{stack.base_url}/sandbox/api/v2"
    assert [c.id for c in keeper.connections(status="active")] == [connection_id]
    with pytest.raises(NotFound):
        keeper.connection("conn_unknown")


def test_a_401_makes_exactly_one_refresh_and_one_retry(stack: Stack, tenant: Tenant,
                                                       connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    api, service = Timeline(), Timeline()
    respondio = RespondIO(keeper_of(stack, tenant, service), connection_id, session=session_over(api))
    respondio.list_channels()
    stack.knobs(client["client_id"], expire_access_tokens=1)
    api.events.clear()

    assert [channel.source for channel in respondio.list_channels()] == ["whatsapp", "facebook", "email"]
    assert api.statuses() == [401, 200]
    assert service.sends("/refresh") == 1
    assert stack.provider_refreshes(client["client_id"]) == 1


def test_a_second_401_names_the_connection(stack: Stack, tenant: Tenant,
                                           connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    api = Timeline()
    respondio = RespondIO(keeper_of(stack, tenant), connection_id, session=session_over(api))
    stack.knobs(client["client_id"], expire_access_tokens=2)
    with pytest.raises(TokenRejected, match=connection_id):
        respondio.list_users()
    assert api.statuses() == [401, 401]
    assert stack.provider_refreshes(client["client_id"]) == 1


def test_a_token_revoked_at_the_provider_is_refreshed_and_then_a_lost_grant_needs_reauth(
        stack: Stack, tenant: Tenant, connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    keeper = keeper_of(stack, tenant)
    respondio = RespondIO(keeper, connection_id)
    respondio.create_contact("email:ann@example.test", first_name="Ann")
    revoke_at_provider(stack, client, keeper.token(connection_id).access_token)

    assert respondio.get_contact("email:ann@example.test").first_name == "Ann"
    assert stack.provider_refreshes(client["client_id"]) == 1

    row = stack.row(connection_id)
    revoke_at_provider(stack, client, stack.runtime.cipher.decrypt(row.refresh_token_enc or ""))  # the whole grant
    with pytest.raises(NeedsReauth):
        respondio.get_contact("email:ann@example.test")
    assert stack.row(connection_id).status == "needs_reauth"


def test_a_429_is_waited_out_for_its_retry_after(stack: Stack, tenant: Tenant,
                                                 connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    api = Timeline()
    respondio = RespondIO(keeper_of(stack, tenant), connection_id, session=session_over(api))
    respondio.list_users()  # the token, before the limit bites
    stack.knobs(client["client_id"], api_rate_limit=1, api_rate_window=2)
    for _ in range(3):
        assert len(respondio.list_users()) == 3

    waits = [(api.events[i], api.events[i + 1]) for i in range(len(api.events) - 1)
             if api.events[i][0] == "answer" and api.events[i][3] == 429]
    assert waits, api.events
    for answer, retry in waits:
        retry_after = float(answer[4] or 0)
        assert retry[0] == "send" and retry_after >= 1
        assert retry_after <= retry[1] - answer[1] <= retry_after * 1.1
    assert api.statuses()[-1] == 200


def test_twenty_threads_meeting_a_401_make_one_refresh_at_the_provider(
        stack: Stack, tenant: Tenant, connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    api, service = Timeline(), Timeline()
    keeper = keeper_of(stack, tenant, service)
    RespondIO(keeper, connection_id, session=session_over(api)).list_channels()  # the token, kept in memory
    # Revoked at the provider, so every thread's first call meets a 401; a slow refresh keeps them together.
    revoke_at_provider(stack, client, keeper.token(connection_id).access_token)
    stack.knobs(client["client_id"], latency_ms=1500)
    api.events.clear()
    barrier, results, errors = threading.Barrier(20), [], []

    def work() -> None:
        respondio = RespondIO(keeper, connection_id, session=session_over(api))
        barrier.wait()
        try:
            results.append(len(respondio.list_channels()))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and results == [3] * 20
    assert sorted(api.statuses()) == [200] * 20 + [401] * 20
    assert service.sends("/refresh") == 1
    assert stack.provider_refreshes(client["client_id"]) == 1


def test_a_post_meeting_a_5xx_is_not_retried_and_a_get_is(stack: Stack, tenant: Tenant,
                                                          connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    api = Timeline()
    respondio = RespondIO(keeper_of(stack, tenant), connection_id, session=session_over(api), policy=FAST)
    respondio.create_contact("phone:+60123456789", first_name="Bo")
    stack.knobs(client["client_id"], api_fail=["500", "503"])
    api.events.clear()

    with pytest.raises(RespondIOError) as raised:
        respondio.send_message("phone:+60123456789", "hello")
    assert raised.value.status == 500 and api.sends("/message") == 1

    assert respondio.get_contact("phone:+60123456789").first_name == "Bo"
    assert api.statuses() == [500, 503, 200]
    assert stack.sandbox_stats(client["client_id"])["api_failures_injected"] == 2


def test_typed_helpers(stack: Stack, tenant: Tenant, connected: tuple[dict[str, Any], str]) -> None:
    _, connection_id = connected
    respondio = RespondIO(keeper_of(stack, tenant), connection_id)
    for n in range(5):
        respondio.create_contact(f"email:c{n}@example.test", first_name=f"C{n}", custom_fields={"plan": "pro"})
    contact = respondio.update_contact("email:c1@example.test", last_name="Lee", phone="+60111111111")
    assert (contact.first_name, contact.last_name, contact.custom_fields) == ("C1", "Lee", {"plan": "pro"})
    assert respondio.get_contact("phone:+60111111111").id == respondio.get_contact(f"id:{contact.id}").id
    assert [c.email for c in respondio.list_contacts(page_size=2)] == [f"c{n}@example.test" for n in range(5)]
    assert [c.first_name for c in respondio.list_contacts("c3@")] == ["C3"]
    sent = respondio.send_message("email:c2@example.test", "hello", channel_id=respondio.list_channels()[0].id)
    assert sent.contact_id == respondio.get_contact("email:c2@example.test").id and sent.message_id == 1
    assert {user.role for user in respondio.list_users(page_size=1)} == {"owner", "manager", "agent"}
    with pytest.raises(RespondIOError) as raised:
        respondio.get_contact("email:nobody@example.test")
    assert raised.value.status == 404


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "flask"), "--app", "web", "connections", "call", *args], env=stack.env,
                          capture_output=True, text=True, timeout=60)


def test_connections_call_prints_the_status_then_the_json(stack: Stack, tenant: Tenant,
                                                          connected: tuple[dict[str, Any], str]) -> None:
    client, connection_id = connected
    stack.knobs(client["client_id"], expire_access_tokens=1)
    done = cli(stack, connection_id, "POST", "/contact/email:ops@example.test", "--json", '{"firstName": "Op"}')
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition("\n")
    assert status == "200" and json.loads(body)["firstName"] == "Op"
    assert stack.provider_refreshes(client["client_id"]) == 1  # the 401 went through the workers' refresh

    missing = cli(stack, connection_id, "get", "/contact/email:nobody@example.test")
    assert missing.returncode == 1 and missing.stdout.startswith("404\n")
    assert json.loads(missing.stdout.partition("\n")[2]) == {"code": 404, "message": "contact not found"}
