"""Fairness between tenants, per provider host and shared by every worker through Redis.

- `HostSlots`: at most `PROVIDER_CONCURRENCY` calls in flight per host. A slot is a
  lease that expires (a member of a sorted set scored by its deadline, judged by Redis'
  own clock), so a worker that dies never keeps one.
- `Breaker`: after `BREAKER_FAILURES` timeouts, dropped connections or 5xx in a row,
  a host is left alone for `PROVIDER_BREAKER_SECONDS`; then one probe is let through
  (half-open), and its success closes the breaker again.

A host is the token URL's host and port, read with urllib3's parser (the one the HTTP
client connects with), so `127.0.0.1:8001` and `localhost:8001` are two hosts."""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis
from urllib3.util import parse_url

from shared.metrics import BREAKER_OPEN
from shared.providers import ProviderError

BREAKER_FAILURES = 5
DEFAULT_PORTS = {"http": 80, "https": 443}

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local n = math.min(free, #ARGV - 2)
for i = 1, n do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i + 2]) end
if n > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return math.max(n, 0)
"""

_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return {1, 0} end
if now < open_until then return {0, open_until - now} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {2, 0} end
return {0, tonumber(ARGV[1])}
"""

_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local failures = redis.call('HINCRBY', KEYS[1], 'failures', tonumber(ARGV[3]))
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if failures >= tonumber(ARGV[1]) or open_until > 0 then
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[2]))
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
return failures
"""


def host_of(url: str) -> str:
    """`host:port` of a URL, as the HTTP client will connect to it."""
    parts = parse_url(url)
    host = (parts.host or "").lower()
    return f"{host}:{parts.port or DEFAULT_PORTS.get(parts.scheme or 'https', 443)}"


def counts_against_host(error: ProviderError) -> bool:
    """Whether a failure says the host is in trouble: a timeout, a dropped or refused
    connection, or a 5xx. A 4xx (including 429) is the host answering."""
    return error.error in {"timeout", "connection_error"} or (error.status is not None and error.status >= 500)


class HostSlots:
    """Leases on a host's `limit` call slots."""

    def __init__(self, client: redis.Redis, limit: int, lease_seconds: float) -> None:
        self.client = client
        self.limit = limit
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)

    @staticmethod
    def key(host: str) -> str:
        return f"provider-slots:{host}"

    def acquire(self, host: str, wanted: int) -> list[str]:
        """Up to `wanted` leases, fewer (or none) when the host's slots are taken."""
        if wanted <= 0:
            return []
        leases = [secrets.token_hex(8) for _ in range(wanted)]
        granted = int(self._acquire(keys=[self.key(host)], args=[self.limit, self.lease_ms, *leases]))
        return leases[:granted]

    def release(self, host: str, leases: Sequence[str]) -> None:
        """Give the leases back (an expired one is simply gone already)."""
        if leases:
            self.client.zrem(self.key(host), *leases)


@dataclass(frozen=True)
class Admission:
    """What the breaker lets through: all calls, one probe, or none for `wait` seconds."""

    calls: int | None  # None: no limit
    wait: float = 0.0


class Breaker:
    """A circuit breaker per host, its state in Redis."""

    def __init__(self, client: redis.Redis, cooldown_seconds: float, probe_seconds: float,
                 failures: int = BREAKER_FAILURES) -> None:
        self.client = client
        self.cooldown_ms = int(cooldown_seconds * 1000)
        self.probe_ms = int(probe_seconds * 1000)
        self.failures = failures
        self._allow = client.register_script(_ALLOW)
        self._failed = client.register_script(_FAILED)

    @staticmethod
    def keys(host: str) -> list[str]:
        return [f"breaker:{host}", f"breaker-probe:{host}"]

    def admit(self, host: str) -> Admission:
        """How many calls to `host` may go now."""
        state, wait_ms = self._allow(keys=self.keys(host), args=[self.probe_ms])
        BREAKER_OPEN.labels(host).set(0 if int(state) == 1 else 1)
        if int(state) == 1:
            return Admission(None)
        if int(state) == 2:
            return Admission(1)
        return Admission(0, int(wait_ms) / 1000)

    def record(self, host: str, succeeded: int, failed: int) -> None:
        """Close on any answer that shows the host alive; count failures otherwise
        (a failed probe opens it again at once)."""
        if succeeded:
            self.client.delete(*self.keys(host))
        elif failed:
            self._failed(keys=self.keys(host), args=[self.failures, self.cooldown_ms, failed])


SLOT_WAIT_SECONDS = 0.25  # how soon a refresh that found no free slot asks again
LONGEST_DEFERRAL_SECONDS = 30.0


class Gate:
    """The breaker and the slots together: what a worker asks before calling a host."""

    def __init__(self, client: redis.Redis, limit: int, breaker_seconds: float, lease_seconds: float) -> None:
        self.slots = HostSlots(client, limit, lease_seconds)
        self.breaker = Breaker(client, breaker_seconds, lease_seconds)

    def admit(self, host: str, wanted: int, breaker: bool = True) -> tuple[list[str], float]:
        """Leases for up to `wanted` calls now, and how long the others should wait.
        `breaker=False` skips the breaker (the built-in sandbox: its failures are injected
        per client, on a host that every tenant using it shares)."""
        admission = self.breaker.admit(host) if breaker else Admission(None)
        if admission.calls == 0:
            return [], min(admission.wait, LONGEST_DEFERRAL_SECONDS)
        leases = self.slots.acquire(host, wanted if admission.calls is None else min(wanted, admission.calls))
        if admission.calls == 1 and not leases:
            self.breaker.client.delete(Breaker.keys(host)[1])  # the probe could not go: the next asker sends it
        return leases, SLOT_WAIT_SECONDS

    def done(self, host: str, leases: Sequence[str], alive: int, failed: int, breaker: bool = True) -> None:
        """Give the leases back and tell the breaker how the host did."""
        self.slots.release(host, leases)
        if breaker:
            self.breaker.record(host, alive, failed)


TURN_SECONDS = 5.0  # a turn at the head of its line that no finished call wakes goes by itself after this
TURN_STEP_SECONDS = 0.25  # and each turn ahead of it in line adds this much (the line moves faster)
LONGEST_TURN_SECONDS = 120.0
TURN_KEPT_SECONDS = 600  # a turn's payload and its host's line outlive the longest wait for a turn


def patience(position: int) -> float:
    """How long the turn at `position` (1: the head) of its line waits before going by itself."""
    return min(TURN_SECONDS + (position - 1) * TURN_STEP_SECONDS, LONGEST_TURN_SECONDS)


class Turns:
    """Refreshes waiting for a host's slots, woken in order as calls finish, so a freed slot
    is taken at once instead of when a poll comes round. Each turn is also queued to go
    by itself, should nothing wake it (a worker died holding slots), after `patience`: the
    longer its line, the later, so that a long line that keeps moving is not churned by
    turns leaving it and queueing again at its end. Whichever comes first takes the
    turn's payload, so it runs once."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def _keys(host: str, turn: str) -> tuple[str, str]:
        return f"provider-waiting:{host}", f"provider-turn:{turn}"

    def wait(self, host: str, payload: str) -> tuple[str, float]:
        """Queue a turn for `host` carrying `payload` (connection ids only); answer its id and
        how long it should wait before going by itself."""
        turn = secrets.token_hex(8)
        waiting, key = self._keys(host, turn)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(key, payload, ex=TURN_KEPT_SECONDS)
        pipe.rpush(waiting, turn)
        pipe.expire(waiting, TURN_KEPT_SECONDS)
        _, position, _ = pipe.execute()
        return turn, patience(int(position))

    def wake(self, host: str, count: int) -> list[str]:
        """Take up to `count` waiting turns of `host`; answer their payloads."""
        waiting = self._keys(host, "")[0]
        payloads: list[str] = []
        for _ in range(count):
            turn = cast(bytes | None, self.client.lpop(waiting))
            if turn is None:
                break
            payload = cast(bytes | None, self.client.getdel(self._keys(host, turn.decode())[1]))
            if payload is not None:
                payloads.append(payload.decode())
        return payloads

    def take(self, host: str, turn: str) -> bool:
        """For a turn going by itself: True if nothing woke it first (it is taken now)."""
        waiting, key = self._keys(host, turn)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(key)
        pipe.lrem(waiting, 1, turn)
        taken, _ = pipe.execute()
        return bool(taken)
