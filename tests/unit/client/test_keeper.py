"""`Keeper`'s typed answers and errors, against a scripted local HTTP server."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from oauth_keeper_client import Keeper, KeeperError, NeedsReauth, NotFound, RateLimited, Revoked, ServiceUnavailable
from oauth_keeper_client.keeper import retry_after

from tests.unit.client.conftest import Scripted


def error(code: str) -> dict:
    return {"error": {"code": code, "message": f"{code} happened"}}


@pytest.fixture()
def keeper(server: Scripted) -> Iterator[Keeper]:
    yield Keeper(server.url + "/", "key-123")


@pytest.mark.parametrize(("status", "code", "headers", "raised"), [
    (404, "not_found", {}, NotFound),
    (409, "needs_reauth", {}, NeedsReauth),
    (409, "revoked", {}, Revoked),
    (409, "integration_mismatch", {}, KeeperError),
    (429, "rate_limited", {"Retry-After": "7"}, RateLimited),
    (503, "refresh_pending", {"Retry-After": "1"}, ServiceUnavailable),
])
def test_error_answers_become_typed_exceptions(server: Scripted, keeper: Keeper, status: int, code: str,
                                               headers: dict, raised: type[Exception]) -> None:
    server.script = [(status, error(code), headers)]
    with pytest.raises(raised) as caught:
        keeper.token("conn_1")
    if isinstance(caught.value, (RateLimited, ServiceUnavailable)):
        assert caught.value.retry_after == float(headers["Retry-After"])
    assert server.seen == [("GET", "/api/v1/connections/conn_1/token", "Bearer key-123")]


def test_an_unreachable_service_is_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        Keeper("http://127.0.0.1:9", "key").connection("conn_1")


def test_tokens_connections_and_sessions_are_dataclasses(server: Scripted, keeper: Keeper) -> None:
    server.script = [
        (200, {"access_token": "secret-token", "token_type": "Bearer", "expires_at": "2030-01-01T00:00:00Z",
               "scopes": ["a"]}, {}),
        (200, {"data": [{"id": "conn_1", "integration_id": "int_1", "end_user_id": "u", "status": "active"}],
               "next_cursor": "c1"}, {}),
        (200, {"data": [{"id": "conn_2", "integration_id": "int_1", "end_user_id": "u", "status": "active"}],
               "next_cursor": None}, {}),
        (201, {"id": "cs_1", "connect_url": "http://svc/connect/x", "expires_at": "2030-01-01T00:00:00Z"}, {}),
    ]
    token = keeper.refresh("conn_1")
    assert token.expires_at is not None and token.expires_at.year == 2030 and "secret-token" not in repr(token)
    assert [c.id for c in keeper.connections(status="active")] == ["conn_1", "conn_2"]
    assert keeper.create_connect_session("int_1", "u", connection_id="conn_1").id == "cs_1"
    assert [path for _, path, _ in server.seen] == [
        "/api/v1/connections/conn_1/refresh", "/api/v1/connections?status=active",
        "/api/v1/connections?status=active&cursor=c1", "/api/v1/connect-sessions"]
    assert "key-123" not in repr(keeper)


def test_delete_connection_and_the_integrations_api_base_url(server: Scripted, keeper: Keeper) -> None:
    server.script = [
        (202, {}, {}),
        (200, {"id": "conn_1", "integration_id": "int_1", "end_user_id": "u", "status": "active"}, {}),
        (200, {"id": "int_1", "provider": "respondio", "client_id": "c", "api_base_url": "https://api.respond.io/v2"},
         {}),
    ]
    assert keeper.delete_connection("conn_1") is None
    assert keeper.api_base_url("conn_1") == "https://api.respond.io/v2"
    assert [(method, path) for method, path, _ in server.seen] == [
        ("DELETE", "/api/v1/connections/conn_1"), ("GET", "/api/v1/connections/conn_1"),
        ("GET", "/api/v1/integrations/int_1")]


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("3") == 3 and retry_after("1.5") == 1.5 and retry_after("-4") == 0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: no wait
