"""The leased rate-limit counters: exact for small limits, never over any limit, and one
Redis round trip per block for a busy key."""
from __future__ import annotations

import random
import time

import fakeredis
import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter

from web import limit_leases
from web.limit_leases import MAX_BLOCK, LeasedRedisStorage, limit_of


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that counts the commands it is sent (a script call is one)."""

    calls = 0

    def execute_command(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingRedis.calls += 1
        return super().execute_command(*args, **kwargs)


def processes(count: int, server: fakeredis.FakeServer) -> list[FixedWindowRateLimiter]:
    """`count` web processes' limiters sharing one Redis."""
    return [FixedWindowRateLimiter(LeasedRedisStorage(client=CountingRedis(server=server))) for _ in range(count)]


def test_the_limit_is_read_from_the_key() -> None:
    item = parse("6000/minute")
    assert limit_of(item.key_for("ratelimit", "api", "tenant:ten_1")) == 6000
    assert limit_of(parse("5/hour").key_for("address:::1")) == 5


def test_a_small_limit_is_exact_across_processes() -> None:
    server = fakeredis.FakeServer()
    limiters = processes(3, server)
    item = parse("5/hour")
    allowed = [limiters[i % 3].hit(item, "tenant:a") for i in range(9)]
    assert allowed == [True] * 5 + [False] * 4
    assert all(limiter.hit(item, "tenant:b") for limiter in limiters)  # another key, its own budget


@pytest.mark.parametrize("limit", [200, 1000, 6000])
def test_a_large_limit_is_never_exceeded_and_hardly_cut_short(limit: int) -> None:
    server = fakeredis.FakeServer()
    limiters = processes(4, server)
    item = parse(f"{limit}/hour")
    rng = random.Random(limit)
    answers = [rng.choice(limiters).hit(item, "tenant:a") for _ in range(limit * 2)]
    assert sum(answers) <= limit
    # The first refusal may come while other processes still hold places they leased: the
    # blocks shrink as the budget runs out, so only a few places are held then.
    assert answers.index(False) >= limit - 4 * 8


def test_a_busy_key_costs_one_round_trip_per_block() -> None:
    limiter = processes(1, fakeredis.FakeServer())[0]
    item = parse("6000/minute")
    CountingRedis.calls = 0
    assert all(limiter.hit(item, "tenant:a") for _ in range(640))
    block = min(MAX_BLOCK, 6000 // 100)
    # One script call per block; the first also loads the script (EVALSHA, SCRIPT LOAD, EVALSHA).
    assert CountingRedis.calls == -(-640 // block) + 2


def test_a_spent_window_refuses_without_asking_redis_again() -> None:
    limiter = processes(1, fakeredis.FakeServer())[0]
    item = parse("3/hour")
    assert [limiter.hit(item, "k") for _ in range(4)] == [True, True, True, False]
    CountingRedis.calls = 0
    assert not any(limiter.hit(item, "k") for _ in range(50))
    assert CountingRedis.calls == 0
    stats = limiter.get_window_stats(item, "k")
    assert stats.remaining == 0
    assert 3590 < stats.reset_time - time.time() <= 3600


def test_a_new_window_brings_a_new_budget() -> None:
    server = fakeredis.FakeServer()
    limiter = processes(1, server)[0]
    item = parse("2/second")
    assert [limiter.hit(item, "k") for _ in range(3)] == [True, True, False]
    time.sleep(1.1)
    assert [limiter.hit(item, "k") for _ in range(3)] == [True, True, False]


def test_windows_that_are_over_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limit_leases, "PRUNE_FROM", 3)
    storage = LeasedRedisStorage(client=CountingRedis(server=fakeredis.FakeServer()))
    limiter = FixedWindowRateLimiter(storage)
    item = parse("5/second")
    for key in "abcd":
        limiter.hit(item, key)
    time.sleep(1.1)
    for key in "efghi":
        limiter.hit(item, key)
    assert len(storage._leases) == 5  # a–d ended with their window
