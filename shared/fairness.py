"""Fairness between tenants, per provider host and shared by every worker through Redis.

- `HostSlots`: at most `PROVIDER_CONCURRENCY` calls in flight per host. A slot is a
  lease that expires (a member of a sorted set scored by its deadline, judged by Redis'
  own clock), so a worker that dies never keeps one.
- `Breaker`: after `BREAKER_FAILURES` timeouts, dropped connections or 5xx in a row,
  a host is left alone for `PROVIDER_BREAKER_SECONDS`; then one probe is let through
  (half-open), and its success closes the breaker again.
- `Line`: the connections waiting for a host's slots, in order.

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

# ARGV: the limit, then leases to give back; answers how many slots are free after.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ARGV > 1 then redis.call('ZREM', KEYS[1], unpack(ARGV, 2)) end
return math.max(tonumber(ARGV[1]) - redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), 0)
"""

# ARGV: the lease's lifetime, then leases; each still live starts its lifetime again.
# Answers those still live.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
for i = 2, #ARGV do
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if deadline and tonumber(deadline) > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
    live[#live + 1] = ARGV[i]
  end
end
if #live > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
return live
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
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

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

    def renew(self, host: str, leases: Sequence[str]) -> list[str]:
        """The leases still live, each good for a full lease again from now (a chunk
        taken from a line holds its slots from then; it renews them when it starts)."""
        if not leases:
            return []
        return [lease.decode() for lease in self._renew(keys=[self.key(host)], args=[self.lease_ms, *leases])]

    def free(self, host: str) -> int:
        """How many of the host's slots no live lease holds now."""
        return self.release(host, ())

    def release(self, host: str, leases: Sequence[str]) -> int:
        """Give the leases back (an expired one is simply gone already); answers how many
        of the host's slots are free now."""
        return int(self._release(keys=[self.key(host)], args=[self.limit, *leases]))


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

    def done(self, host: str, leases: Sequence[str], alive: int, failed: int, breaker: bool = True) -> int:
        """Give the leases back and tell the breaker how the host did; answers how many of
        the host's slots are free now."""
        free = self.slots.release(host, leases)
        if breaker:
            self.breaker.record(host, alive, failed)
        return free


LINE_STALLED_SECONDS = 5.0  # a line that nothing took from for this long is taken from by the sweep
LINE_KEPT_SECONDS = 600  # a line outlives any wait in it (the connections' markers last 300 s)

# KEYS: the line, its moved marker, the hosts with a line. ARGV: 1 to join at the front,
# the stall milliseconds, the line's lifetime, the host, then the entries. A line that this
# join starts counts as moving (joining is not moving: a stalled line stays stalled).
_JOIN = """
local length = redis.call(ARGV[1] == '1' and 'LPUSH' or 'RPUSH', KEYS[1], unpack(ARGV, 5))
if length == #ARGV - 4 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
"""

# KEYS: a line, the hosts with a line. ARGV: the host, forgotten only if its line is empty.
_FORGET = """
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
"""


@dataclass(frozen=True)
class Waiting:
    """Connections taken from a host's line, with whether the host's breaker guards them."""

    connection_ids: list[str]
    breaker: bool


class Line:
    """Connections waiting for a host's slots, in order, in Redis: a refresh that finds no
    free slot joins it without a message of its own, and whoever gives slots back takes as
    many connections from its head as the host has free slots and queues them holding
    those slots, so a freed slot is used at once and no message goes without a slot
    waiting for it. Should nothing give slots back (a worker died holding them, until
    their leases expire), the sweep takes from a line that has not moved for
    `stalled_seconds`."""

    HOSTS = "provider-lines"  # the hosts that may have a line

    def __init__(self, client: redis.Redis, stalled_seconds: float = LINE_STALLED_SECONDS) -> None:
        self.client = client
        self.stalled_ms = int(stalled_seconds * 1000)
        self._join = client.register_script(_JOIN)
        self._forget = client.register_script(_FORGET)

    @staticmethod
    def _keys(host: str) -> tuple[str, str]:
        return f"provider-line:{host}", f"provider-line-moved:{host}"

    def join(self, host: str, connection_ids: Sequence[str], breaker: bool, front: bool = False) -> None:
        """Queue connections at the end of the host's line, or at its `front` (their turn
        had come already)."""
        if connection_ids:
            entries = [f"{int(breaker)}:{cid}" for cid in connection_ids]
            self._join(keys=[*self._keys(host), self.HOSTS],
                       args=[int(front), self.stalled_ms, LINE_KEPT_SECONDS, host,
                             *(reversed(entries) if front else entries)])

    def take(self, host: str, count: int) -> list[Waiting]:
        """Up to `count` connections from the head of the host's line, in order, grouped
        by runs of the same breaker flag."""
        line, moved = self._keys(host)
        pipe = self.client.pipeline(transaction=False)
        pipe.lpop(line, count)
        pipe.set(moved, 1, px=self.stalled_ms)
        entries, _ = pipe.execute()
        taken: list[Waiting] = []
        for entry in cast(list[bytes] | None, entries) or []:
            flag, _, connection_id = entry.decode().partition(":")
            if not taken or taken[-1].breaker != (flag == "1"):
                taken.append(Waiting([], flag == "1"))
            taken[-1].connection_ids.append(connection_id)
        return taken

    def stalled(self) -> list[str]:
        """The hosts whose line has connections and has not moved for `stalled_seconds`
        (hosts whose line is empty are forgotten)."""
        hosts = sorted(member.decode() for member in cast(set[bytes], self.client.smembers(self.HOSTS)))
        pipe = self.client.pipeline(transaction=False)
        for host in hosts:
            line, moved = self._keys(host)
            pipe.llen(line)
            pipe.exists(moved)
        answers = pipe.execute()
        stalled = []
        for host, length, moving in zip(hosts, answers[::2], answers[1::2], strict=True):
            if not length:
                self._forget(keys=[self._keys(host)[0], self.HOSTS], args=[host])
            elif not moving:
                stalled.append(host)
        return stalled
