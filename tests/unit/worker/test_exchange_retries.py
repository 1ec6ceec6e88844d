"""`exchange_code`'s retries: transient failures try again with the same code, a
definitive answer never does, and a redelivery never posts a code already posted."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.models import ConnectAttempt, Connection, ConnectSession, Integration, Tenant, new_id, utcnow
from shared.providers import ProviderError, TokenSet
from shared.runtime import Runtime
from worker import exchange

CODE = "the-authorization-code-0123456789"
VERIFIER = "v" * 43


@pytest.fixture
def posts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The codes posted to the provider; each post answers the next scripted outcome."""
    posted: list[Any] = []
    script: list[Any] = []

    def post(_client: Any, *, code: str, **_: Any) -> TokenSet:
        posted.append(code)
        outcome = script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(exchange, "post_code", post)
    yield posted, script  # type: ignore[misc]


def _attempt(rt: Runtime, revoked_connection: bool = False) -> str:
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=new_id("hash"))
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c",
                                  client_secret_enc=rt.cipher.encrypt("s"), scopes=["a"],
                                  authorize_url="https://idp.example/a", token_url="https://idp.example/t")
        session.add(integration)
        session.flush()
        connection = Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                                status="revoked")
        if revoked_connection:
            session.add(connection)
            session.flush()
        connect_session = ConnectSession(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u",
                                         token_hash=new_id("h"), expires_at=utcnow(),
                                         connection_id=connection.id if revoked_connection else None)
        session.add(connect_session)
        session.flush()
        attempt = ConnectAttempt(session_id=connect_session.id)
        session.add(attempt)
    rt.codes.put(attempt.id, CODE, VERIFIER)
    return attempt.id


def _status(rt: Runtime, attempt_id: str) -> tuple[str, str | None]:
    with rt.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        assert attempt is not None
        return attempt.status, attempt.error


TOKENS = TokenSet("at", "Bearer", "rt", 3600, None)
UNAVAILABLE = ProviderError("503", status=503, error="temporarily_unavailable")


def test_a_transient_failure_puts_the_code_back_and_the_retry_connects(memory_runtime: Runtime, posts: Any) -> None:
    posted, script = posts
    script.extend([UNAVAILABLE, TOKENS])
    attempt_id = _attempt(memory_runtime)
    until = time.time() + exchange.EXCHANGE_WINDOW_SECONDS

    done = exchange._exchange(memory_runtime, attempt_id, 0, until)
    assert (done.outcome, done.error) == ("retrying", "temporarily_unavailable")
    assert done.retry_in is not None and 0 < done.retry_in < 1
    assert _status(memory_runtime, attempt_id) == ("pending", None)
    assert exchange._exchange(memory_runtime, attempt_id, 1, until) == exchange.Exchanged("connected")
    assert posted == [CODE, CODE]
    assert _status(memory_runtime, attempt_id) == ("succeeded", None)
    assert memory_runtime.codes.take(attempt_id) is None  # spent


@pytest.mark.parametrize(("error", "counted_as"), [
    (ProviderError("x", status=400, error="invalid_grant"), "invalid_grant"),
    (ProviderError("x", status=400, error="invalid_request"), "invalid_request"),
    (ProviderError("x", status=429, error="slow_down"), "http_4xx"),  # no standard code: its status class
])
def test_a_definitive_answer_is_never_retried(memory_runtime: Runtime, posts: Any, error: ProviderError,
                                              counted_as: str) -> None:
    posted, script = posts
    script.append(error)
    attempt_id = _attempt(memory_runtime)
    assert exchange._exchange(memory_runtime, attempt_id, 0, time.time() + 15) == exchange.Exchanged("failed",
                                                                                                     counted_as)
    assert posted == [CODE]
    assert _status(memory_runtime, attempt_id) == ("failed", error.error)
    assert memory_runtime.codes.take(attempt_id) is None


def test_retries_stop_when_the_window_closes(memory_runtime: Runtime, posts: Any) -> None:
    posted, script = posts
    script.append(UNAVAILABLE)
    attempt_id = _attempt(memory_runtime)
    assert exchange._exchange(memory_runtime, attempt_id, 0, time.time() + 0.1) == exchange.Exchanged(
        "failed", "temporarily_unavailable")
    assert _status(memory_runtime, attempt_id) == ("failed", "temporarily_unavailable")


def test_retries_stop_after_the_last_try(memory_runtime: Runtime, posts: Any) -> None:
    posted, script = posts
    script.append(UNAVAILABLE)
    attempt_id = _attempt(memory_runtime)
    assert exchange._exchange(memory_runtime, attempt_id, exchange.MAX_TRIES - 1, time.time() + 60) == \
        exchange.Exchanged("failed", "temporarily_unavailable")
    assert _status(memory_runtime, attempt_id) == ("failed", "temporarily_unavailable")


def test_a_redelivery_after_a_crash_during_the_post_never_posts_the_code_again(
        memory_runtime: Runtime, posts: Any) -> None:
    posted, script = posts
    attempt_id = _attempt(memory_runtime)

    class Crash(BaseException):
        """The worker dies while the provider holds the code."""

    script.append(Crash())
    with pytest.raises(Crash):
        exchange._exchange(memory_runtime, attempt_id, 0, time.time() + 15)
    redelivered = exchange._exchange(memory_runtime, attempt_id, 0, time.time() + 15)
    assert redelivered == exchange.Exchanged("interrupted")
    assert posted == [CODE]
    assert _status(memory_runtime, attempt_id) == ("failed", "exchange_interrupted")


def test_a_reauthorization_of_a_revoked_connection_fails_without_posting_the_code(
        memory_runtime: Runtime, posts: Any) -> None:
    posted, script = posts
    script.append(TOKENS)
    attempt_id = _attempt(memory_runtime, revoked_connection=True)
    assert exchange._exchange(memory_runtime, attempt_id, 0, time.time() + 15) == exchange.Exchanged("revoked")
    assert posted == []
    assert _status(memory_runtime, attempt_id) == ("failed", "connection_revoked")
    assert memory_runtime.codes.take(attempt_id) is None
