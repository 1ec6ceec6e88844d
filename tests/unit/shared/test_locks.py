"""The refresh lock: an owner token, so an expired holder cannot free someone else's lock."""
from __future__ import annotations

import time

import fakeredis
import pytest
from redis.exceptions import LockNotOwnedError

from shared import refreshes
from shared.locks import RefreshLock, release_refresh_locks, take_refresh_locks


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


def test_many_locks_are_taken_and_released_in_one_round_trip_each_as_one_would_be() -> None:
    redis = fakeredis.FakeRedis()
    other = RefreshLock(redis, "b", 5)
    assert other.acquire()
    held = take_refresh_locks(redis, ["a", "b", "c"], 5)
    assert set(held) == {"a", "c"}, "a lock someone holds is not taken"
    assert 4000 < redis.pttl("refresh:a") <= 5000 and redis.get("refresh:a") == held["a"].encode()
    redis.set("refresh:c", "the next holder's token")  # c expired and was taken by someone else
    assert release_refresh_locks(redis, held) == ["c"]
    assert not redis.exists("refresh:a")
    assert redis.get("refresh:c") == b"the next holder's token" and other.owned()


def test_settling_clears_or_keeps_each_marker_and_announces_every_connection() -> None:
    redis = fakeredis.FakeRedis()
    updates = redis.pubsub()
    updates.subscribe(refreshes.UPDATES_CHANNEL)
    assert updates.get_message(timeout=1)["type"] == "subscribe"
    refreshes.claim(redis, ["x", "y", "z"])
    refreshes.settle(redis, ["x"], {"y": 30.4, "z": 900})
    assert not redis.exists(refreshes.queued_key("x"))
    assert redis.ttl(refreshes.queued_key("y")) == 30 and 890 < redis.ttl(refreshes.queued_key("z")) <= 900
    assert [updates.get_message(timeout=1)["data"] for _ in range(3)] == [b"x", b"y", b"z"]
