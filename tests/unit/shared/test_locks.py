"""The refresh lock: an owner token, so an expired holder cannot free someone else's lock."""
from __future__ import annotations

import time

import fakeredis
import pytest
from redis.exceptions import LockNotOwnedError

from shared import refreshes
from shared.locks import RefreshLock


def test_one_holder_at_a_time() -> None:
    redis = fakeredis.FakeRedis()
    first, second = RefreshLock(redis, "conn_1", 5), RefreshLock(redis, "conn_1", 5)
    assert first.acquire()
    assert not second.acquire()
    assert 4 < second.remaining_seconds() <= 5
    first.release()
    assert second.acquire()
    assert RefreshLock(redis, "conn_2", 5).acquire(), "locks are per connection"


def test_an_expired_holder_cannot_release_the_next_holders_lock() -> None:
    redis = fakeredis.FakeRedis()
    stale = RefreshLock(redis, "conn_1", 0.05)
    assert stale.acquire()
    time.sleep(0.1)
    current = RefreshLock(redis, "conn_1", 5)
    assert current.acquire()
    with pytest.raises(LockNotOwnedError):
        stale.release()
    assert redis.exists("refresh:conn_1")
    assert current.owned()


def test_a_connection_is_claimed_for_queueing_once() -> None:
    redis = fakeredis.FakeRedis()
    assert refreshes.claim(redis, ["a", "b"]) == ["a", "b"]
    assert refreshes.claim(redis, ["a", "b", "c"]) == ["c"]
    assert 0 < redis.ttl(refreshes.queued_key("a")) <= refreshes.QUEUED_TTL_SECONDS
    refreshes.finish(redis, "a")
    assert refreshes.claim(redis, ["a"]) == ["a"]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], dict[str, str], str]] = []

    def send_task(self, name: str, args: list[str], kwargs: dict[str, str], queue: str, **_: object) -> None:
        self.sent.append((name, args, kwargs, queue))


def test_an_asked_for_refresh_is_queued_once_on_the_interactive_queue() -> None:
    redis = fakeredis.FakeRedis()
    celery = _Recorder()
    assert refreshes.request_refresh(redis, celery, "conn_1", "never")  # type: ignore[arg-type]
    assert not refreshes.request_refresh(redis, celery, "conn_1", "never")  # type: ignore[arg-type]
    assert celery.sent == [("tokens.refresh_connection", ["conn_1"], {"seen": "never"}, "interactive")]
    refreshes.keep_queued(redis, "conn_1", 90)
    assert 85 < redis.ttl(refreshes.queued_key("conn_1")) <= 90
