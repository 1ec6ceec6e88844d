"""The client's call policy against a scripted local HTTP server: 401, 429/449, 5xx, dropped connections."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from oauth_keeper_client import (
    ClientError,
    NeedsReauth,
    RateLimited,
    RespondIO,
    RespondIOError,
    RetryPolicy,
    ServiceUnavailable,
    Token,
    TokenRejected,
)
from oauth_keeper_client.tokens import TokenCache

from tests.unit.client.conftest import DROP, Scripted


class Source:
    """A token source that hands out numbered tokens and counts refreshes."""

    def __init__(self, base_url: str, fail_refresh: Exception | None = None) -> None:
        self.base_url, self.fail_refresh = base_url, fail_refresh
        self.issued, self.refreshes = 0, 0

    def _next(self) -> Token:
        self.issued += 1
        return Token(f"token-{self.issued}", "Bearer", datetime.now(UTC) + timedelta(hours=1), [])

    def token(self, connection_id: str) -> Token:
        return self._next()

    def refresh(self, connection_id: str) -> Token:
        self.refreshes += 1
        if self.fail_refresh:
            raise self.fail_refresh
        return self._next()

    def api_base_url(self, connection_id: str) -> str | None:
        return self.base_url


@pytest.fixture()
def waits() -> list[float]:
    return []


def client(server: Scripted, waits: list[float], source: Source | None = None, **policy: Any) -> RespondIO:
    return RespondIO(source or Source(server.url), "conn_1", sleep=waits.append, policy=RetryPolicy(**policy))


def test_a_401_refreshes_once_and_retries_with_the_new_token(server: Scripted, waits: list[float]) -> None:
    source = Source(server.url)
    server.script = [(401, {}, {}), (200, {"items": []}, {})]
    assert client(server, waits, source).list_channels() == []
    assert [auth for _, _, auth in server.seen] == ["Bearer token-1", "Bearer token-2"]
    assert source.refreshes == 1


def test_a_second_401_raises_naming_the_connection(server: Scripted, waits: list[float]) -> None:
    source = Source(server.url)
    server.script = [(401, {}, {}), (401, {"message": "no"}, {})]
    with pytest.raises(TokenRejected, match="conn_1") as raised:
        client(server, waits, source).request("GET", "/space/user")
    assert raised.value.body == {"message": "no"} and source.refreshes == 1


def test_a_failed_refresh_surfaces_once_for_every_holder_of_the_rejected_token(server: Scripted) -> None:
    source = Source(server.url, fail_refresh=NeedsReauth(409, "needs_reauth", "authorize again"))
    cache = TokenCache(source, "conn_1")
    rejected = cache.current()
    for _ in range(2):
        with pytest.raises(NeedsReauth):
            cache.replace(rejected)
    assert source.refreshes == 1


def test_a_transient_refresh_failure_is_tried_again_by_the_next_holder(server: Scripted) -> None:
    source = Source(server.url, fail_refresh=ServiceUnavailable(503, "refresh_pending", "try again"))
    cache = TokenCache(source, "conn_1")
    rejected = cache.current()
    with pytest.raises(ServiceUnavailable):
        cache.replace(rejected)
    source.fail_refresh = None
    assert cache.replace(rejected).access_token == "token-2" and source.refreshes == 2


def test_429_and_449_wait_their_retry_after(server: Scripted, waits: list[float]) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.script = [(429, {}, {"Retry-After": "2"}), (449, {}, {"Retry-After": later}), (449, {}, {})]
    assert client(server, waits).request("GET", "/space/user").status_code == 200
    assert waits[0] == 2 and 28 <= waits[1] <= 30 and waits[2] == 1.0  # default_wait without a header
    assert len(server.seen) == 4


def test_rate_limits_past_the_bounds_raise(server: Scripted, waits: list[float]) -> None:
    server.script = [(429, {}, {"Retry-After": "120"})]
    with pytest.raises(RateLimited) as raised:
        client(server, waits, max_wait=60).request("GET", "/space/user")
    assert raised.value.retry_after == 120 and waits == []
    server.script = [(429, {}, {"Retry-After": "1"})] * 3
    with pytest.raises(RateLimited):
        client(server, waits, rate_limit_waits=2).request("GET", "/space/user")
    assert waits == [1, 1]


def test_5xx_is_retried_with_backoff_for_idempotent_calls_only(server: Scripted, waits: list[float]) -> None:
    server.script = [(503, {}, {}), (502, {}, {}), (200, {"id": 1}, {})]
    assert client(server, waits, backoff=0.5).request("PUT", "/contact/id:1", json={}).json() == {"id": 1}
    assert len(waits) == 2 and 0.5 <= waits[0] <= 0.625 and 1.0 <= waits[1] <= 1.25

    server.seen.clear()
    server.script = [(500, {}, {}), (200, {}, {})]
    with pytest.raises(RespondIOError) as raised:
        client(server, waits).send_message("id:1", "hello")
    assert raised.value.status == 500 and len(server.seen) == 1

    server.script = [(500, {}, {})] * 5
    assert client(server, waits, max_retries=2).request("GET", "/space/user").status_code == 500


def test_a_dropped_connection_is_retried_for_a_get_but_not_for_a_post(server: Scripted, waits: list[float]) -> None:
    server.script = [DROP, (200, {"items": []}, {})]
    assert client(server, waits).list_users() == []
    server.seen.clear()
    server.script = [DROP, (200, {}, {})]
    with pytest.raises(RespondIOError, match="got no answer"):
        client(server, waits).send_message("id:1", "hello")
    assert len(server.seen) == 1


def test_the_token_never_leaves_for_another_host(server: Scripted, waits: list[float]) -> None:
    respondio = client(server, waits)
    for path in ("http://elsewhere.test/x", "//elsewhere.test/x", "contact/id:1", "https:/x"):
        with pytest.raises(ValueError):
            respondio.request("GET", path)
    with pytest.raises(ValueError):
        respondio.get_contact("name:ann")
    assert server.seen == [] and "token" not in repr(respondio) and "token-" not in repr(Token("token-9", "Bearer",
                                                                                              None, []))


def test_a_due_token_is_fetched_again_and_a_kept_one_is_not(server: Scripted) -> None:
    source = Source(server.url)
    cache = TokenCache(source, "conn_1", margin_seconds=60)
    first = cache.current()
    assert cache.current() is first and source.issued == 1
    cache._token = Token("old", "Bearer", datetime.now(UTC) + timedelta(seconds=30), [])
    assert cache.current().access_token == "token-2"


def test_an_integration_without_an_api_base_url_needs_one_given(server: Scripted) -> None:
    source = Source("")
    with pytest.raises(ClientError, match="api_base_url"):
        _ = RespondIO(source, "conn_1").base_url
    assert RespondIO(source, "conn_1", base_url=server.url + "/").base_url == server.url


def test_list_contacts_follows_the_cursor(server: Scripted, waits: list[float]) -> None:
    page = {"items": [{"id": 1, "firstName": "A"}], "pagination": {"next": f"{server.url}/contact/list?cursorId=1"}}
    server.script = [(200, page, {}), (200, {"items": [{"id": 2}], "pagination": {"next": None}}, {})]
    assert [contact.id for contact in client(server, waits).list_contacts(page_size=1)] == [1, 2]
    assert [path for _, path, _ in server.seen] == ["/contact/list?limit=1", "/contact/list?limit=1&cursorId=1"]
