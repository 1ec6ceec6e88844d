"""`exchange_code`'s work against a token endpoint on loopback: the code is posted once,
and every failure ends the attempt with a reason."""
from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

import worker.metrics  # noqa: F401 - the task signals' handlers, connected as in a worker
from shared.models import ConnectAttempt, Connection, ConnectSession, Integration, Tenant, new_id, utcnow
from shared.runtime import Runtime
from tests.unit.worker.conftest import Reply, TokenEndpoint, history
from worker import app, exchange
from worker.exchange import _exchange


def _attempt(rt: Runtime, token_url: str, connection_id: str | None = None, pkce: bool = True) -> str:
    """A pending attempt whose code waits in Redis, for an integration posting to `token_url`."""
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=new_id("hash"))
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="cid",
                                  client_secret_enc=rt.cipher.encrypt("secret"), scopes=["default"],
                                  authorize_url="https://idp.example/a", token_url=token_url, pkce=pkce)
        session.add(integration)
        session.flush()
        connect_session = ConnectSession(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u",
                                         token_hash=new_id("h"), expires_at=utcnow() + timedelta(minutes=30),
                                         connection_id=connection_id)
        session.add(connect_session)
        session.flush()
        attempt = ConnectAttempt(session_id=connect_session.id)
        session.add(attempt)
    rt.codes.put(attempt.id, "the-code", "the-verifier")
    return attempt.id


def _ended(rt: Runtime, attempt_id: str) -> ConnectAttempt:
    with rt.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
    assert attempt is not None
    return attempt


def test_a_code_is_exchanged_once_for_a_new_connection(worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    attempt_id = _attempt(rt, endpoint.url)
    _exchange(rt, attempt_id)
    attempt = _ended(rt, attempt_id)
    assert attempt.status == "succeeded" and attempt.connection_id
    assert endpoint.forms == [{"grant_type": ["authorization_code"], "code": ["the-code"],
                               "redirect_uri": [rt.settings.redirect_uri], "code_verifier": ["the-verifier"]}]
    with rt.db.session() as session:
        connection = session.get(Connection, attempt.connection_id)
    assert connection is not None and connection.scopes == ["default"]
    assert rt.cipher.decrypt(connection.refresh_token_enc or "") == "new-rt"
    assert history(rt, connection.id) == ["created"]
    _exchange(rt, attempt_id)  # a redelivery: the attempt has ended, nothing is posted
    assert len(endpoint.forms) == 1


def test_a_redelivered_exchange_whose_code_is_gone_never_posts_it_again(worker_runtime: Runtime,
                                                                        endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    attempt_id = _attempt(rt, endpoint.url)
    rt.codes.take(attempt_id)  # the first delivery took it, then its worker died
    _exchange(rt, attempt_id)
    assert (_ended(rt, attempt_id).status, _ended(rt, attempt_id).error) == ("failed", "exchange_interrupted")
    assert endpoint.forms == []


def test_each_failure_class_ends_the_attempt_with_its_reason(worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    cases = [
        ("invalid_grant", Reply(400, {"error": "invalid_grant"})),
        ("http_503", Reply(503, b"<h1>down</h1>")),
        ("slow_down", Reply(429, {"error": "slow_down"}, {"Retry-After": "5"})),
        ("invalid_response", Reply(200, {"token_type": "Bearer"})),  # no access token
        ("invalid_response", Reply(200, {"access_token": "at", "expires_in": "soon"})),
    ]
    for reason, reply in cases:
        endpoint.replies.append(reply)
        attempt_id = _attempt(rt, endpoint.url)
        _exchange(rt, attempt_id)
        assert (_ended(rt, attempt_id).status, _ended(rt, attempt_id).error) == ("failed", reason)
    with endpoint.hold():
        attempt_id = _attempt(rt, endpoint.url)
        _exchange(rt, attempt_id)
    assert _ended(rt, attempt_id).error == "timeout"
    attempt_id = _attempt(rt, "http://127.0.0.1:9/token")
    _exchange(rt, attempt_id)
    assert _ended(rt, attempt_id).error == "connection_error"
    with rt.db.session() as session:
        assert session.scalars(select(Connection)).all() == []


def test_a_reauthorization_keeps_the_connection_and_bumps_its_version(worker_runtime: Runtime,
                                                                      endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    first = _attempt(rt, endpoint.url)
    _exchange(rt, first)
    connection_id = _ended(rt, first).connection_id
    assert connection_id
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None
        connection.status = "needs_reauth"
        old_version = connection.version
    endpoint.replies.append(Reply(body={"access_token": "at-2", "expires_in": 60, "scope": "x y"}))
    again = _attempt(rt, endpoint.url, connection_id=connection_id)
    _exchange(rt, again)
    assert _ended(rt, again).connection_id == connection_id
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
    assert connection is not None
    assert connection.status == "active" and connection.version == old_version + 1 and connection.scopes == ["x", "y"]
    assert history(rt, connection_id) == ["created", "reauthorized"]


def _counted() -> dict[tuple[str, str], float]:
    """Every `oauth_exchanges_total` sample of this process, by (outcome, error)."""
    return {(sample.labels["outcome"], sample.labels.get("error", "")): sample.value
            for family in REGISTRY.collect() if family.name == "oauth_exchanges"
            for sample in family.samples if sample.name == "oauth_exchanges_total"}


def test_each_run_is_counted_by_how_it_ended_not_by_its_task_state(
        monkeypatch: pytest.MonkeyPatch, worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    # The task runs through Celery's tracer, signals and all, on the test's runtime.
    monkeypatch.setenv("SECRET_KEY", worker_runtime.settings.secret_key)
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", worker_runtime.settings.token_encryption_keys)
    monkeypatch.setattr(app, "runtime", lambda: worker_runtime)
    rt = worker_runtime
    endpoint.replies += [Reply(400, {"error": "invalid_grant"}), Reply(503, b"<h1>down</h1>"), Reply()]
    before = _counted()
    failed, retried, interrupted = (_attempt(rt, endpoint.url) for _ in range(3))
    rt.codes.take(interrupted)  # a worker took the code, then died

    for attempt_id in (failed, retried, interrupted):
        exchange.exchange_code.apply(args=[attempt_id])

    assert [_ended(rt, a).status for a in (failed, retried, interrupted)] == ["failed", "succeeded", "failed"]
    counted = {key: value - before.get(key, 0) for key, value in _counted().items() if value != before.get(key, 0)}
    assert counted == {("failed", "invalid_grant"): 1, ("retrying", "http_5xx"): 1, ("connected", ""): 1,
                       ("interrupted", ""): 1}
