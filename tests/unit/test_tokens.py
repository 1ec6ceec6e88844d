"""The lifecycle rules: when a connection is due, the fenced write, the failure classes."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared.models import Connection, utcnow
from shared.providers import ProviderError, TokenSet
from shared.runtime import Runtime
from shared.tokens import (
    Failure,
    classify,
    due_at,
    fenced_update,
    is_due,
    margin_for,
    needs_refresh,
    refresh_mark,
    token_values,
)
from tests.conftest import seed_connections

MARGIN = 600


def test_the_margin_is_the_setting_for_long_lived_tokens() -> None:
    assert margin_for(3600, MARGIN) == 600
    assert margin_for(1200, MARGIN) == 600
    assert margin_for(None, MARGIN) == 600


def test_tokens_shorter_than_twice_the_margin_are_due_at_half_their_lifetime() -> None:
    assert margin_for(1199, MARGIN) == 599.5
    assert margin_for(60, MARGIN) == 30
    now = utcnow()
    assert due_at(now + timedelta(seconds=60), 60, MARGIN) == now + timedelta(seconds=30)


def test_a_token_without_expiry_is_never_due() -> None:
    assert due_at(None, None, MARGIN) is None
    assert not is_due(Connection(status="active", expires_at=None), MARGIN)


@pytest.mark.parametrize(("expires_in", "lifetime", "status", "due"), [
    (3000, 3600, "active", False),
    (601, 3600, "active", False),
    (599, 3600, "active", True),
    (-5, 3600, "active", True),
    (31, 60, "active", False),
    (29, 60, "active", True),
    (10, 3600, "needs_reauth", False),
    (10, 3600, "revoked", False),
])
def test_is_due(expires_in: int, lifetime: int, status: str, due: bool) -> None:
    now = utcnow()
    connection = Connection(status=status, expires_at=now + timedelta(seconds=expires_in), lifetime_seconds=lifetime)
    assert is_due(connection, MARGIN, now) is due


def test_a_connection_without_a_refresh_token_waits_for_expiry_even_when_forced() -> None:
    now = utcnow()
    soon = Connection(status="active", expires_at=now + timedelta(seconds=60), lifetime_seconds=3600,
                      refresh_token_enc=None)
    assert is_due(soon, MARGIN) and not needs_refresh(soon, None, MARGIN)
    assert not needs_refresh(soon, refresh_mark(soon), MARGIN), "nothing to refresh with: serve the token"
    expired = Connection(status="active", expires_at=now - timedelta(seconds=1), lifetime_seconds=3600,
                         refresh_token_enc=None)
    assert needs_refresh(expired, None, MARGIN)
    assert needs_refresh(expired, refresh_mark(expired), MARGIN)
    refreshable = Connection(status="active", expires_at=now + timedelta(seconds=60), lifetime_seconds=3600,
                             refresh_token_enc="sealed")
    assert needs_refresh(refreshable, None, MARGIN)


def test_a_response_without_a_refresh_token_keeps_the_stored_one(memory_runtime: Runtime) -> None:
    values = token_values(TokenSet("at", "Bearer", None, 3600, None), memory_runtime.cipher)
    assert "refresh_token_enc" not in values and "scopes" not in values
    assert memory_runtime.cipher.decrypt(values["access_token_enc"]) == "at"
    rotated = token_values(TokenSet("at2", "Bearer", "rt2", 60, ["a"]), memory_runtime.cipher)
    assert memory_runtime.cipher.decrypt(rotated["refresh_token_enc"]) == "rt2"
    assert rotated["lifetime_seconds"] == 60 and rotated["scopes"] == ["a"]


def test_the_fenced_update_lets_only_the_reader_of_the_current_version_write(memory_runtime: Runtime) -> None:
    [connection_id] = seed_connections(memory_runtime, [None])
    with memory_runtime.db.session() as session:
        connection = session.get(Connection, connection_id)
    read_by_a = read_by_b = connection.version
    with memory_runtime.db.session() as session:
        assert fenced_update(session, connection.id, read_by_b, {"last_error": "from B"})
    with memory_runtime.db.session() as session:
        assert not fenced_update(session, connection.id, read_by_a, {"last_error": "from A"})
    with memory_runtime.db.session() as session:
        stored = session.get(Connection, connection.id)
        assert stored.version == read_by_b + 1 and stored.last_error == "from B"


@pytest.mark.parametrize(("error", "failure"), [
    (ProviderError("x", status=400, error="invalid_grant"), Failure.REAUTH),
    (ProviderError("x", status=401, error="unauthorized_client"), Failure.REAUTH),
    (ProviderError("x", status=429, error="slow_down", retry_after=3), Failure.RATE_LIMITED),
    (ProviderError("x", status=503, error="temporarily_unavailable"), Failure.TRANSIENT),
    (ProviderError("x", status=500, error="server_error"), Failure.TRANSIENT),
    (ProviderError("timeout", error="timeout"), Failure.TRANSIENT),
    (ProviderError("reset", error="connection_error"), Failure.TRANSIENT),
])
def test_failure_classes(error: ProviderError, failure: Failure) -> None:
    assert classify(error) is failure
