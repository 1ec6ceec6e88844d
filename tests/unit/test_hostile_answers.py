"""Hostile or broken token-endpoint answers, each served by a local HTTP server, for both
the code exchange and a refresh: a failed attempt with a clear code, or a recorded refresh
failure; no crash, no half-written row, and a refresh token the answer carries is kept."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from shared.models import ConnectAttempt, Connection, ConnectSession, Event, Integration, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant
from shared.tokens import refresh_mark
from web import create_app
from worker.exchange import _exchange
from worker.refresh import refresh_once

NEW_RT = "rt-rotated-by-the-provider"
Reply = Callable[[BaseHTTPRequestHandler], None]


def send(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)
    return reply


def _token(**fields: object) -> bytes:
    return json.dumps({"access_token": "at-new", "token_type": "Bearer", "expires_in": 3600,
                       "refresh_token": NEW_RT, **fields}).encode()


def _endless(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    handler.wfile.write(b'{"access_token": "')
    try:
        while True:  # a byte at a time, each well within the read timeout, never ending
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def _raw(text: str) -> Reply:
    return send(200, text.encode())


@dataclass(frozen=True)
class Case:
    reply: Reply
    error: str  # the attempt's error, and the code that starts the refresh's last_error
    carries_refresh_token: bool = False


CASES = {
    "not_json": Case(send(200, b"hello", "text/plain"), "invalid_response"),
    "html_error_page": Case(send(500, b"<html><h1>Internal Server Error</h1></html>", "text/html"), "http_500"),
    "html_with_200": Case(send(200, b"<!doctype html><p>Welcome</p>", "text/html"), "invalid_response"),
    "missing_access_token": Case(_raw(json.dumps({"token_type": "Bearer", "refresh_token": NEW_RT})),
                                 "invalid_response", carries_refresh_token=True),
    "expires_in_negative": Case(send(200, _token(expires_in=-5)), "invalid_response", True),
    "expires_in_zero": Case(send(200, _token(expires_in=0)), "invalid_response", True),
    "expires_in_huge": Case(_raw(_token().decode().replace('"expires_in": 3600', '"expires_in": 1e12')),
                            "invalid_response", True),
    "expires_in_infinity": Case(_raw(_token().decode().replace('"expires_in": 3600', '"expires_in": Infinity')),
                                "invalid_response", True),
    "expires_in_text": Case(send(200, _token(expires_in="soon")), "invalid_response", True),
    "token_type_overlong": Case(send(200, _token(token_type="B" * 40)), "invalid_response", True),
    "ten_megabytes": Case(send(200, b'{"access_token": "' + b"a" * (10 << 20) + b'"}'),
                          "invalid_response: answer too large"),
    "never_ending": Case(_endless, "timeout"),
    "deeply_nested": Case(_raw('{"a": ' * 100_000 + "1" + "}" * 100_000), "invalid_response"),
    "redirect": Case(send(302, b"", Location="/elsewhere"), "redirect_refused"),
    "error_text_with_controls": Case(send(503, json.dumps(
        {"error": "temporarily_unavailable\n\x1b[31mFAKE LOG LINE", "error_description": "a\r\nb\x00" * 5000}
    ).encode()), "temporarily_unavailable[31mFAKE"),
}


class _Provider(BaseHTTPRequestHandler):
    reply: Reply = send(500, b"")
    requests: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Provider.requests.append(self.path)
        _Provider.reply(self)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


@dataclass
class World:
    rt: Runtime
    key: str
    tenant_id: str
    integration_id: str


def make_world(rt: Runtime, provider_url: str) -> World:
    """A tenant and an integration whose token endpoint is the test's provider."""
    # Loopback is allowed for the test's provider; a short timeout for the endless body.
    rt.settings = rt.settings.model_copy(update={"http_timeout_seconds": 1.0, "allow_private_provider_urls": True})
    with rt.db.session() as session:
        tenant, key = create_tenant(session, "acme")
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c",
                                  client_secret_enc=rt.cipher.encrypt("s"), scopes=[], pkce=True,
                                  authorize_url="https://idp.example/a", token_url=provider_url)
        session.add(integration)
        session.flush()
        return World(rt, key, tenant.id, integration.id)


@pytest.fixture
def world(memory_runtime: Runtime, provider_url: str) -> World:
    return make_world(memory_runtime, provider_url)


def serve(case: Case) -> None:
    _Provider.reply, _Provider.requests = case.reply, []


def seed_connection(world: World) -> str:
    rt, now = world.rt, utcnow()
    with rt.db.session() as session:
        connection = Connection(tenant_id=world.tenant_id, integration_id=world.integration_id, end_user_id="u",
                                scopes=[], status="active", access_token_enc=rt.cipher.encrypt("at-stored"),
                                refresh_token_enc=rt.cipher.encrypt("rt-stored"), token_type="Bearer",
                                expires_at=now + timedelta(hours=1), lifetime_seconds=3600)
        session.add(connection)
        session.flush()
        return connection.id


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_refresh_answer_is_a_recorded_failure_and_the_stored_token_still_serves(
        name: str, world: World, caplog: pytest.LogCaptureFixture) -> None:
    case, rt = CASES[name], world.rt
    serve(case)
    connection_id = seed_connection(world)
    with rt.db.session() as session:
        seen = refresh_mark(session.get(Connection, connection_id))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        outcome = refresh_once(rt, connection_id, seen)
    assert outcome.name == "failed" and outcome.retry_in is not None
    assert _Provider.requests == ["/token"], "one call, no redirect followed"
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None
        events = session.scalars(select(Event.type).where(Event.connection_id == connection_id)).all()
    assert connection.status == "active" and connection.refresh_failures == 1
    assert connection.last_error is not None and connection.last_error.startswith(case.error)
    assert connection.last_error.isprintable() and len(connection.last_error) <= 300
    assert rt.cipher.decrypt(connection.access_token_enc) == "at-stored"  # type: ignore[arg-type]
    expected_rt = NEW_RT if case.carries_refresh_token else "rt-stored"
    assert rt.cipher.decrypt(connection.refresh_token_enc) == expected_rt  # type: ignore[arg-type]
    assert list(events) == ["refresh_failed"]
    assert all(record.getMessage().isprintable() for record in caplog.records)
    app = create_app(runtime_=rt)
    answer = app.test_client().get(f"/api/v1/connections/{connection_id}/token",
                                   headers={"Authorization": f"Bearer {world.key}"})
    assert answer.status_code == 200 and answer.get_json()["access_token"] == "at-stored"


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_exchange_answer_fails_the_attempt_with_a_clear_code(name: str, world: World) -> None:
    case, rt = CASES[name], world.rt
    serve(case)
    with rt.db.session() as session:
        connect_session = ConnectSession(tenant_id=world.tenant_id, integration_id=world.integration_id,
                                         end_user_id="u", token_hash=f"h-{name}",
                                         expires_at=utcnow() + timedelta(minutes=30))
        session.add(connect_session)
        session.flush()
        attempt = ConnectAttempt(session_id=connect_session.id)
        session.add(attempt)
        session.flush()
        attempt_id = attempt.id
    rt.codes.put(attempt_id, "the-code", "v" * 64)
    _exchange(rt, attempt_id)
    assert _Provider.requests == ["/token"]
    with rt.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        assert attempt is not None and attempt.status == "failed"
        assert attempt.error is not None and attempt.error.startswith(case.error.split(":")[0])
        assert attempt.error.isprintable() and len(attempt.error) <= 64
        assert session.scalar(select(func.count()).select_from(Connection)) == 0, "no half-written connection"


def test_retry_after_is_bounded_at_an_hour(world: World) -> None:
    serve(Case(send(429, b'{"error": "slow_down"}', Retry_After="999999999"), "slow_down"))
    outcome = refresh_once(world.rt, seed_connection(world), "never")  # forced: the mark of a never-refreshed row
    assert outcome.name == "rate_limited" and outcome.hold_for == 3600


def test_a_forced_refresh_without_a_refresh_token_keeps_serving_the_token(world: World) -> None:
    rt = world.rt
    connection_id = seed_connection(world)
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None
        connection.refresh_token_enc = None
    serve(CASES["not_json"])
    answer = create_app(runtime_=rt).test_client().post(f"/api/v1/connections/{connection_id}/refresh",
                                                        headers={"Authorization": f"Bearer {world.key}"})
    assert answer.status_code == 200 and answer.get_json()["access_token"] == "at-stored"
    assert refresh_once(rt, connection_id, "never").name == "not_needed"
    assert _Provider.requests == []
    with rt.db.session() as session:
        assert session.get(Connection, connection_id).status == "active"  # type: ignore[union-attr]
