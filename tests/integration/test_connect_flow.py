"""The connect flow end to end: browser, web, Redis, worker processes and the sandbox provider."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from sqlalchemy import inspect, select, text

from tests.integration.stack import Browser, Stack, wait_for

pytestmark = pytest.mark.integration


def test_a_connect_session_ends_in_an_active_connection_and_a_token(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"], "user-42"))

    assert attempt["status"] == "succeeded"
    connection = tenant.call("GET", f"/connections/{attempt['connection_id']}").json()
    assert connection["status"] == "active"
    assert connection["end_user_id"] == "user-42"
    assert connection["integration_id"] == integration["id"]
    assert connection["scopes"] == ["contact:read", "message:write"]
    token = tenant.call("GET", f"/connections/{attempt['connection_id']}/token")
    assert token.status_code == 200
    assert token.headers["Cache-Control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer" and body["expires_at"].endswith("Z")
    introspection = requests.post(f"{stack.base_url}/sandbox/oauth/introspect", data={"token": body["access_token"]},
                                  auth=(client["client_id"], client["client_secret"]), timeout=5).json()
    assert introspection["active"] is True
    events = tenant.call("GET", f"/connections/{attempt['connection_id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["created"]
    listed = tenant.call("GET", "/connections", params={"end_user_id": "user-42"}).json()
    assert [c["id"] for c in listed["data"]] == [attempt["connection_id"]]


def test_the_flow_sends_pkce_and_the_exact_redirect_uri(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    authorize_url = Browser(stack).open_connect(tenant.connect_url(integration["id"]))
    params = dict(parse_qsl(urlsplit(authorize_url).query))
    assert params["redirect_uri"] == f"{stack.base_url}/oauth/callback"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["scope"] == "contact:read message:write"
    assert params["client_id"] == integration["client_id"]


def test_client_secret_post_authentication_also_exchanges(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration(token_auth_method="client_secret_post")
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    assert attempt["status"] == "succeeded"


def test_access_denied_fails_the_attempt_with_that_reason(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    connect_url = tenant.connect_url(integration["id"], return_url="https://app.example/done?x=1")
    browser = Browser(stack)
    response = browser.callback(browser.decide(browser.open_connect(connect_url), "deny"))
    assert response.status_code == 303
    attempt = browser.attempt(response.headers["Location"])
    assert attempt == {"status": "failed", "error": "access_denied"}
    assert stack.sandbox_stats(client["client_id"])["token_requests"]["authorization_code"] == 0
    page = browser.session.get(f"{stack.base_url}{response.headers['Location']}", allow_redirects=False, timeout=5)
    assert page.status_code == 303
    back = urlsplit(page.headers["Location"])
    assert back.netloc == "app.example"
    assert parse_qs(back.query) == {"x": ["1"], "status": ["failed"], "error": ["access_denied"]}
    assert tenant.call("GET", "/connections").json()["data"] == []


def test_the_return_url_gets_the_connection_id_and_status(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    browser = Browser(stack)
    response = browser.callback(browser.decide(browser.open_connect(
        tenant.connect_url(integration["id"], return_url="https://app.example/back"))))
    attempt = browser.attempt(response.headers["Location"])
    page = browser.session.get(f"{stack.base_url}{response.headers['Location']}", allow_redirects=False, timeout=5)
    assert page.status_code == 303
    query = parse_qs(urlsplit(page.headers["Location"]).query)
    assert query == {"status": ["succeeded"], "connection_id": [attempt["connection_id"]]}


def test_a_replayed_callback_is_refused_with_no_second_exchange(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    browser = Browser(stack)
    callback_url = browser.decide(browser.open_connect(tenant.connect_url(integration["id"])))
    first = browser.callback(callback_url)
    assert browser.attempt(first.headers["Location"])["status"] == "succeeded"

    replay = browser.callback(callback_url)
    assert replay.status_code == 400
    assert "expired or was already used" in replay.text
    assert stack.sandbox_stats(client["client_id"])["token_requests"]["authorization_code"] == 1
    assert len(tenant.call("GET", "/connections").json()["data"]) == 1


def test_an_expired_state_is_refused(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    browser = Browser(stack)
    authorize_url = browser.open_connect(tenant.connect_url(integration["id"]))
    state = dict(parse_qsl(urlsplit(authorize_url).query))["state"]
    key = f"state:{state}"
    assert 0 < stack.runtime.redis.ttl(key) <= 600
    stack.runtime.redis.pexpire(key, 1)
    wait_for(lambda: not stack.runtime.redis.exists(key), what="the state to expire")

    response = browser.callback(browser.decide(authorize_url))
    assert response.status_code == 400
    assert stack.sandbox_stats(client["client_id"])["token_requests"]["authorization_code"] == 0


def test_a_browser_without_the_binding_cookie_is_refused(stack: Stack) -> None:
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    victim = Browser(stack)
    callback_url = victim.decide(victim.open_connect(tenant.connect_url(integration["id"])))

    attacker = Browser(stack)
    response = attacker.callback(callback_url)
    assert response.status_code == 400
    assert "another browser" in response.text
    assert stack.sandbox_stats(client["client_id"])["token_requests"]["authorization_code"] == 0
    # The state was consumed by the refused attempt: the legitimate browser cannot reuse it either.
    assert victim.callback(callback_url).status_code == 400


def test_a_connect_link_works_once_only(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    connect_url = tenant.connect_url(integration["id"])
    assert Browser(stack).open_connect(connect_url)
    again = Browser(stack).session.get(connect_url, allow_redirects=False, timeout=5)
    assert again.status_code == 410
    assert "already used" in again.text
    unknown = requests.get(f"{stack.base_url}/connect/not-a-token", timeout=5)
    assert unknown.status_code == 404


def test_an_issuer_mismatch_fails_the_attempt(stack: Stack) -> None:
    # A sandbox integration always names the sandbox as its issuer: a callback that
    # claims another issuer (RFC 9207, a mix-up attack) must fail the attempt.
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    browser = Browser(stack)
    callback = urlsplit(browser.decide(browser.open_connect(tenant.connect_url(integration["id"]))))
    query = [(k, "https://someone-else.example" if k == "iss" else v) for k, v in parse_qsl(callback.query)]
    response = browser.callback(urlunsplit(callback._replace(query=urlencode(query))))
    assert response.status_code == 303, response.text
    assert browser.attempt(response.headers["Location"]) == {"status": "failed", "error": "issuer_mismatch"}


def test_callback_and_status_pages_leak_no_referrer(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    browser = Browser(stack)
    response = browser.callback(browser.decide(browser.open_connect(tenant.connect_url(integration["id"]))))
    page = browser.session.get(f"{stack.base_url}{response.headers['Location']}", timeout=5)
    for answer in (response, page):
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    for loader in ("src=", "href=", "url(", "@import"):
        assert loader not in page.text


def _kombu_bodies(raw: str) -> list[str]:
    """The decoded bodies of the Celery messages in a Redis value: the broker keeps a
    message's body base64-encoded (queued messages as the envelope, unacked ones as
    [envelope, exchange, routing_key]), so a plain scan would miss what it carries."""
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    found: list[str] = []
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, dict):
            body = item.get("body")
            if isinstance(body, str) and (item.get("properties") or {}).get("body_encoding") == "base64":
                found.append(base64.b64decode(body).decode(errors="replace"))
            todo.extend(v for v in item.values() if isinstance(v, (list, dict)))
    return found


def _redis_values(stack: Stack) -> list[str]:
    """Every key and value of the stack's Redis database, Celery message bodies decoded."""
    chunks: list[str] = []
    r = stack.runtime.redis
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        chunks.append(key.decode(errors="replace"))
        values: list[str] = []
        if kind == "string":
            values.append(r.get(key).decode(errors="replace"))
        elif kind == "hash":
            for k, v in r.hgetall(key).items():
                values.extend([k.decode(errors="replace"), v.decode(errors="replace")])
        elif kind == "list":
            values.extend(v.decode(errors="replace") for v in r.lrange(key, 0, -1))
        elif kind in ("set", "zset"):
            members = r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)
            values.extend(m.decode(errors="replace") for m in members)
        elif kind == "stream":
            values.extend(repr(entry) for entry in r.xrange(key))
        for value in values:
            chunks.append(value)
            chunks.extend(_kombu_bodies(value))
    return chunks


def _everything_stored(stack: Stack) -> str:
    """Every value in every table and every Redis key of the tests' database, as one text."""
    chunks: list[str] = []
    with stack.runtime.db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                chunks.extend(str(value) for value in row)
    chunks.extend(_redis_values(stack))
    return "\n".join(chunks)


def _queued_exchanges(stack: Stack) -> list[list]:
    """The args of every `connect.exchange_code` message waiting in a queue."""
    r = stack.runtime.redis
    found = []
    for key in r.scan_iter(count=1000):
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            try:
                envelope = json.loads(raw)
            except ValueError:
                continue
            if isinstance(envelope, dict) and (envelope.get("headers") or {}).get("task") == "connect.exchange_code":
                found.append(json.loads(_kombu_bodies(raw.decode())[0])[0])
    return found


@pytest.fixture(scope="module")
def idle_stack(stack_factory: Callable[..., Stack]) -> Iterator[Stack]:
    """A system with no worker yet, so that a queued message stays in Redis to be read."""
    stack = stack_factory(workers=0)
    try:
        yield stack
    finally:
        stack.stop_all()


def test_no_token_code_or_secret_is_stored_in_plaintext(idle_stack: Stack) -> None:
    from shared.models import Connection

    stack = idle_stack
    tenant = stack.tenant()
    client, integration = tenant.sandbox_integration()
    connect_url = tenant.connect_url(integration["id"])
    connect_token = urlsplit(connect_url).path.rsplit("/", 1)[1]
    browser = Browser(stack)
    authorize_url = browser.open_connect(connect_url)
    state = dict(parse_qsl(urlsplit(authorize_url).query))["state"]
    sealed = stack.runtime.redis.get(f"state:{state}")
    assert sealed is not None
    verifier = json.loads(stack.runtime.cipher.decrypt(sealed.decode()))["code_verifier"]
    callback_url = browser.decide(authorize_url)
    code = dict(parse_qsl(urlsplit(callback_url).query))["code"]
    response = browser.callback(callback_url)
    assert response.status_code == 303, response.text
    attempt_id = response.headers["Location"].rsplit("/", 1)[1]

    # No worker runs: the exchange waits in the broker, carrying the attempt id alone.
    assert _queued_exchanges(stack) == [[attempt_id]]
    queued = _everything_stored(stack)
    for secret in (code, verifier, connect_token):
        assert len(secret) >= 16
        assert secret not in queued

    stack.start_worker("w1")
    attempt = browser.attempt(response.headers["Location"], timeout=30)
    assert attempt["status"] == "succeeded", attempt
    assert _queued_exchanges(stack) == []
    access_token = tenant.call("GET", f"/connections/{attempt['connection_id']}/token").json()["access_token"]
    with stack.runtime.db.session() as session:
        stored = session.scalar(select(Connection).where(Connection.id == attempt["connection_id"]))
        refresh_token = stack.runtime.cipher.decrypt(stored.refresh_token_enc)

    everything = _everything_stored(stack)
    logs = "\n".join(process.output() for process in stack.processes)
    assert "w1" in [process.name for process in stack.processes] and "web" in [p.name for p in stack.processes]
    for secret in (access_token, refresh_token, code, verifier, connect_token, client["client_secret"],
                   tenant.api_key):
        assert len(secret) >= 16
        assert secret not in everything
        assert secret not in logs


def test_the_connect_link_token_never_reaches_a_log(stack: Stack) -> None:
    tenant = stack.tenant()
    _, integration = tenant.sandbox_integration()
    connect_url = tenant.connect_url(integration["id"])
    connect_token = urlsplit(connect_url).path.rsplit("/", 1)[1]
    Browser(stack).open_connect(connect_url)
    requests.get(connect_url, allow_redirects=False, timeout=5)  # a second, refused, opening is logged too
    web = next(process for process in stack.processes if process.name == "web")
    wait_for(lambda: "GET /connect/" in web.output(), timeout=5, what="the web's access log line")
    logs = "\n".join(process.output() for process in stack.processes)
    assert connect_token not in logs


def test_a_tenant_cannot_see_another_tenants_resources(stack: Stack) -> None:
    owner, stranger = stack.tenant("owner"), stack.tenant("stranger")
    _, integration = owner.sandbox_integration()
    attempt = Browser(stack).connect(owner.connect_url(integration["id"]))
    connection_id = attempt["connection_id"]

    for path in (f"/integrations/{integration['id']}", f"/connections/{connection_id}",
                 f"/connections/{connection_id}/token", f"/connections/{connection_id}/events"):
        response = stranger.call("GET", path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        assert owner.call("GET", path).status_code == 200, path
    assert stranger.call("GET", "/integrations").json()["data"] == []
    assert stranger.call("GET", "/connections").json()["data"] == []
    session = stranger.call("POST", "/connect-sessions", json={"integration_id": integration["id"], "end_user_id": "x"})
    assert session.status_code == 404

    refreshed = stranger.call("POST", f"/connections/{connection_id}/refresh")
    assert refreshed.status_code == 404
    assert refreshed.json()["error"]["code"] == "not_found"
    # With an integration of its own, the stranger still cannot re-authorize the owner's connection.
    _, own_integration = stranger.sandbox_integration()
    reauth = stranger.call("POST", "/connect-sessions", json={"integration_id": own_integration["id"],
                                                              "end_user_id": "x", "connection_id": connection_id})
    assert reauth.status_code == 404, reauth.text
    assert reauth.json()["error"]["code"] == "not_found"
    assert owner.call("GET", f"/connections/{connection_id}/events").json()["data"][-1]["type"] == "created"
