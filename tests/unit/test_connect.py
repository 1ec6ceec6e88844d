"""The browser flow (`/connect/{token}`, `/oauth/callback`, the attempt page) with the
Flask test client over fakeredis and in-memory SQLite; Celery is a recording stand-in."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect, select, text, update

from shared import pkce
from shared.crypto import Cipher, digest
from shared.db import Database
from shared.models import Base, ConnectAttempt, Connection, ConnectSession, utcnow
from shared.queue import EXCHANGE_CODE
from shared.runtime import Runtime
from shared.tenants import create_tenant
from tests.conftest import make_settings
from web import create_app
from web.connect import BINDING_COOKIE

AUTHORIZE_URL = "https://idp.example/oauth/authorize"
TOKEN_URL = "https://idp.example/oauth/token"
CODE = "the-authorization-code-0123456789"


class RecordingCelery:
    """Stands in for the Celery client: records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        self.sent.append({"name": name, "args": args, "kwargs": kwargs, "options": options})


@dataclass
class Flow:
    """An app over a runtime, a tenant's API key and an integration of that tenant."""

    runtime: Runtime
    app: Flask
    client: FlaskClient
    api_key: str
    integration_id: str
    celery: RecordingCelery = field(default_factory=RecordingCelery)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.open(f"/api/v1{path}", method=method,
                                headers={"Authorization": f"Bearer {self.api_key}"}, **kwargs)

    def connect_url(self, **extra: Any) -> str:
        response = self.api("POST", "/connect-sessions",
                            json={"integration_id": self.integration_id, "end_user_id": "user-1", **extra})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["connect_url"]

    def token_of(self, connect_url: str) -> str:
        return urlsplit(connect_url).path.rsplit("/", 1)[1]

    def start(self, connect_url: str, client: FlaskClient | None = None) -> tuple[Any, dict[str, str]]:
        """Open the link; return the answer and the authorize URL's query parameters."""
        response = (client or self.client).get(urlsplit(connect_url).path)
        assert response.status_code == 302, response.get_data(as_text=True)
        return response, dict(parse_qsl(urlsplit(response.headers["Location"]).query))

    def set_cookies(self, response: Any) -> list[str]:
        return response.headers.getlist("Set-Cookie")


def make_flow(rt: Runtime) -> Flow:
    celery = RecordingCelery()
    rt.celery = celery  # type: ignore[assignment]
    app = create_app(runtime_=rt)
    client = app.test_client()
    with rt.db.session() as session:
        _, api_key = create_tenant(session, "acme")
    response = client.post("/api/v1/integrations", headers={"Authorization": f"Bearer {api_key}"}, json={
        "provider": "oauth2", "client_id": "client-1", "client_secret": "client-secret-value-0123456789",
        "scopes": ["contact:read", "message:write"], "authorize_url": AUTHORIZE_URL, "token_url": TOKEN_URL,
    })
    assert response.status_code == 201, response.get_json()
    return Flow(rt, app, client, api_key, response.get_json()["id"], celery)


@pytest.fixture
def flow(memory_runtime: Runtime) -> Flow:
    return make_flow(memory_runtime)


def https_runtime() -> Runtime:
    settings = make_settings(public_base_url="https://connect.example.com", sandbox_provider=False)
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys))


def cookie_attributes(header: str) -> tuple[str, set[str]]:
    """The cookie's name=value and its attributes, lower-cased."""
    first, *rest = [part.strip() for part in header.split(";")]
    return first, {part.lower() for part in rest}


def attempts(rt: Runtime) -> list[ConnectAttempt]:
    with rt.db.session() as session:
        return list(session.scalars(select(ConnectAttempt)).all())


# --- /connect/{token} -------------------------------------------------------------


def test_the_link_redirects_to_the_provider_with_state_pkce_and_the_exact_redirect_uri(flow: Flow) -> None:
    response, params = flow.start(flow.connect_url())
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AUTHORIZE_URL
    assert params["response_type"] == "code"
    assert params["client_id"] == "client-1"
    assert params["redirect_uri"] == "http://127.0.0.1:8000/oauth/callback"
    assert params["scope"] == "contact:read message:write"
    assert len(params["state"]) >= 32
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43

    # The challenge is the S256 of the verifier kept, encrypted, with the state.
    sealed = flow.runtime.redis.get(f"state:{params['state']}")
    assert sealed is not None and params["state"].encode() not in sealed
    pending = json.loads(flow.runtime.cipher.decrypt(sealed.decode()))
    assert pkce.s256_challenge(pending["code_verifier"]) == params["code_challenge"]
    assert 0 < flow.runtime.redis.ttl(f"state:{params['state']}") <= 600

    cookies = [c for c in flow.set_cookies(response) if c.startswith(f"{BINDING_COOKIE}=")]
    assert len(cookies) == 1
    pair, attributes = cookie_attributes(cookies[0])
    assert pending["binding_hash"] == digest(pair.split("=", 1)[1])
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "secure" not in attributes  # plain http base URL
    assert "path=/" in attributes


def test_the_binding_cookie_is_secure_under_an_https_base_url() -> None:
    flow = make_flow(https_runtime())
    response, params = flow.start(flow.connect_url())
    assert params["redirect_uri"] == "https://connect.example.com/oauth/callback"
    cookies = [c for c in flow.set_cookies(response) if c.startswith(f"{BINDING_COOKIE}=")]
    assert len(cookies) == 1
    _, attributes = cookie_attributes(cookies[0])
    assert {"secure", "httponly", "samesite=lax"} <= attributes


def test_an_unknown_link_is_404(flow: Flow) -> None:
    assert flow.client.get("/connect/not-a-token").status_code == 404


def test_an_expired_link_is_410(flow: Flow) -> None:
    connect_url = flow.connect_url()
    with flow.runtime.db.session() as session:
        session.execute(update(ConnectSession).where(ConnectSession.token_hash == digest(flow.token_of(connect_url)))
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    response = flow.client.get(urlsplit(connect_url).path)
    assert response.status_code == 410
    assert "expired" in response.get_data(as_text=True)
    assert "Location" not in response.headers
    assert list(flow.runtime.redis.scan_iter("state:*")) == []


def test_a_used_link_is_410(flow: Flow) -> None:
    connect_url = flow.connect_url()
    flow.start(connect_url)
    again = flow.app.test_client().get(urlsplit(connect_url).path)
    assert again.status_code == 410
    assert "already used" in again.get_data(as_text=True)
    assert len(list(flow.runtime.redis.scan_iter("state:*"))) == 1


# --- /oauth/callback --------------------------------------------------------------


def test_a_callback_without_the_binding_cookie_is_refused_and_enqueues_nothing(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    stranger = flow.app.test_client()  # another browser: no cookie at all
    response = stranger.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert response.status_code == 400
    assert "another browser" in response.get_data(as_text=True)
    assert flow.celery.sent == []
    assert attempts(flow.runtime) == []
    assert list(flow.runtime.redis.scan_iter("attempt-code:*")) == []


def test_a_callback_with_another_binding_cookie_is_refused_and_enqueues_nothing(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    flow.client.set_cookie(BINDING_COOKIE, "somebody-elses-binding-value")
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert response.status_code == 400
    assert "another browser" in response.get_data(as_text=True)
    assert flow.celery.sent == []
    assert attempts(flow.runtime) == []
    assert list(flow.runtime.redis.scan_iter("attempt-code:*")) == []


def test_the_right_cookie_queues_one_exchange_with_the_attempt_id_only(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert response.status_code == 303, response.get_data(as_text=True)
    (attempt,) = attempts(flow.runtime)
    assert urlsplit(response.headers["Location"]).path == f"/connect/attempts/{attempt.id}"
    assert attempt.status == "pending"

    assert len(flow.celery.sent) == 1
    call = flow.celery.sent[0]
    assert call["name"] == EXCHANGE_CODE
    assert list(call["args"]) == [attempt.id]
    assert not call["kwargs"]
    assert CODE not in repr(call)

    # The state is gone: a replay finds nothing and queues nothing more.
    replay = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert replay.status_code == 400
    assert len(flow.celery.sent) == 1


def test_the_code_is_stored_only_encrypted(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert response.status_code == 303
    (attempt,) = attempts(flow.runtime)
    r = flow.runtime.redis

    everything: list[bytes] = []
    for key in r.scan_iter():
        everything.append(key)
        if r.type(key) == b"string":
            everything.append(r.get(key))
    assert not any(CODE.encode() in chunk for chunk in everything)
    with flow.runtime.db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                assert not any(CODE in str(value) for value in row), table

    sealed = r.get(f"attempt-code:{attempt.id}")
    assert sealed is not None
    assert 0 < r.ttl(f"attempt-code:{attempt.id}") <= 600
    stored = json.loads(flow.runtime.cipher.decrypt(sealed.decode()))
    assert stored["code"] == CODE
    assert pkce.s256_challenge(stored["verifier"]) == params["code_challenge"]
    assert flow.runtime.codes.take(attempt.id) == (CODE, stored["verifier"])


def test_a_provider_error_fails_the_attempt_with_that_reason(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "error": "access_denied",
                                                                "error_description": "The user said no"})
    assert response.status_code == 303
    (attempt,) = attempts(flow.runtime)
    assert urlsplit(response.headers["Location"]).path == f"/connect/attempts/{attempt.id}"
    assert (attempt.status, attempt.error) == ("failed", "access_denied")
    assert attempt.finished_at is not None
    assert flow.celery.sent == []
    assert list(flow.runtime.redis.scan_iter("attempt-code:*")) == []


@pytest.mark.parametrize("value", [
    "<script>alert(1)</script>",
    "a b",
    "x" * 65,
    "access_denied\n",
])
def test_a_bogus_provider_error_is_reduced_to_provider_error(flow: Flow, value: str) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "error": value})
    assert response.status_code == 303
    (attempt,) = attempts(flow.runtime)
    assert (attempt.status, attempt.error) == ("failed", "provider_error")
    assert flow.celery.sent == []
    page = flow.client.get(response.headers["Location"])
    assert "<script>" not in page.get_data(as_text=True)


def test_a_callback_without_a_code_fails_the_attempt(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"]})
    assert response.status_code == 303
    (attempt,) = attempts(flow.runtime)
    assert (attempt.status, attempt.error) == ("failed", "missing_code")
    assert flow.celery.sent == []


@pytest.mark.parametrize("query", [{"state": "never-issued", "code": CODE}, {"code": CODE}, {"state": ""}])
def test_an_unknown_state_is_400(flow: Flow, query: dict[str, str]) -> None:
    flow.start(flow.connect_url())  # a real state exists, and a cookie is set
    response = flow.client.get("/oauth/callback", query_string=query)
    assert response.status_code == 400
    assert flow.celery.sent == []
    assert attempts(flow.runtime) == []


def test_callback_pages_send_no_referrer(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url())
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    page = flow.client.get(response.headers["Location"])
    refused = flow.client.get("/oauth/callback", query_string={"state": "nope"})
    for answer in (response, page, refused):
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


# --- /connect/attempts/{id} ---------------------------------------------------------


def _attempt(flow: Flow, **session_extra: Any) -> tuple[str, str]:
    """A pending attempt through the flow; its id and status path."""
    _, params = flow.start(flow.connect_url(**session_extra))
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "code": CODE})
    assert response.status_code == 303
    path = response.headers["Location"]
    return path.rsplit("/", 1)[1], path


def _finish(flow: Flow, attempt_id: str, status: str, error: str | None = None) -> str | None:
    """End the attempt as a worker would; a success gets a connection."""
    with flow.runtime.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        connect_session = session.get(ConnectSession, attempt.session_id)
        connection_id = None
        if status == "succeeded":
            connection = Connection(tenant_id=connect_session.tenant_id, integration_id=connect_session.integration_id,
                                    end_user_id=connect_session.end_user_id, scopes=[])
            session.add(connection)
            session.flush()
            connection_id = connection.id
        attempt.status, attempt.error, attempt.connection_id = status, error, connection_id
        attempt.finished_at = utcnow()
    return connection_id


def test_the_attempt_page_answers_json_or_html(flow: Flow) -> None:
    attempt_id, path = _attempt(flow)
    as_json = flow.client.get(path, headers={"Accept": "application/json"})
    assert as_json.status_code == 200
    assert as_json.get_json() == {"status": "pending"}
    as_html = flow.client.get(path, headers={"Accept": "text/html"})
    assert as_html.status_code == 200
    assert as_html.mimetype == "text/html"
    assert "Connecting" in as_html.get_data(as_text=True)
    assert 'http-equiv="refresh"' in as_html.get_data(as_text=True)

    connection_id = _finish(flow, attempt_id, "succeeded")
    done = flow.client.get(path, headers={"Accept": "application/json"})
    assert done.get_json() == {"status": "succeeded", "connection_id": connection_id}
    page = flow.client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 200  # no return_url: the page says so and stays
    assert "Connected" in page.get_data(as_text=True)


def test_an_unknown_attempt_is_404_in_json_and_html(flow: Flow) -> None:
    as_json = flow.client.get("/connect/attempts/att_nope", headers={"Accept": "application/json"})
    assert as_json.status_code == 404
    assert as_json.get_json()["error"]["code"] == "not_found"
    assert flow.client.get("/connect/attempts/att_nope", headers={"Accept": "text/html"}).status_code == 404


def test_a_pending_attempt_does_not_leave_for_the_return_url(flow: Flow) -> None:
    _, path = _attempt(flow, return_url="https://app.example/done")
    assert flow.client.get(path, headers={"Accept": "text/html"}).status_code == 200


def test_the_return_url_keeps_its_query_and_gets_the_outcome(flow: Flow) -> None:
    attempt_id, path = _attempt(flow, return_url="https://app.example/done?x=1&y=two")
    connection_id = _finish(flow, attempt_id, "succeeded")
    page = flow.client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 303
    back = urlsplit(page.headers["Location"])
    assert (back.scheme, back.netloc, back.path) == ("https", "app.example", "/done")
    assert parse_qs(back.query) == {"x": ["1"], "y": ["two"], "status": ["succeeded"],
                                    "connection_id": [connection_id]}
    assert back.query.startswith("x=1&y=two&")


def test_a_failed_attempt_returns_with_its_error(flow: Flow) -> None:
    _, params = flow.start(flow.connect_url(return_url="https://app.example/back?from=connect"))
    response = flow.client.get("/oauth/callback", query_string={"state": params["state"], "error": "access_denied"})
    page = flow.client.get(response.headers["Location"], headers={"Accept": "text/html"})
    assert page.status_code == 303
    back = urlsplit(page.headers["Location"])
    assert back.path == "/back"
    assert parse_qs(back.query) == {"from": ["connect"], "status": ["failed"], "error": ["access_denied"]}


def test_a_return_url_without_a_query_gets_one(flow: Flow) -> None:
    attempt_id, path = _attempt(flow, return_url="https://app.example/back")
    _finish(flow, attempt_id, "failed", "exchange_failed")
    page = flow.client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 303
    assert page.headers["Location"] == "https://app.example/back?status=failed&error=exchange_failed"
