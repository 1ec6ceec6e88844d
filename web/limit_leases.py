"""The rate limits' counters, kept in Redis and leased to each web process in blocks.

A fixed window's counter lives in Redis, shared by every process, as with limits' own
Redis storage. But a process does not make a round trip for every request: it takes a
block of the window's budget at once (INCRBY, in one script) and hands out the block's
places locally, so a busy tenant costs one round trip per block, not per request.

Blocks are a hundredth of the limit (at most `MAX_BLOCK`) and shrink as the window's
budget runs out, to one place at a time near the end; a limit under 100 is counted one
request at a time, exactly as before. What a process leased and did not use is lost
with the window, so a tenant may be refused at most a few blocks early; never late.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import cast

import redis
from limits.storage import Storage

# The largest block of places a process takes at once.
MAX_BLOCK = 64
# How many windows a process keeps before it forgets those that are over (it doubles
# with the live ones, so forgetting stays rare).
PRUNE_FROM = 10_000
# A block is at most this fraction of what is left of the window's budget.
SHARE_OF_REST = 8

# KEYS[1]: the window's counter. ARGV: limit, largest block, places wanted now, window
# seconds, SHARE_OF_REST. Answers the counter after the increment, the block's size and
# the window's remaining milliseconds.
_LEASE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local rest = math.floor((tonumber(ARGV[1]) - used) / tonumber(ARGV[5]))
local size = math.max(tonumber(ARGV[3]), math.min(tonumber(ARGV[2]), rest))
local upto = redis.call('INCRBY', KEYS[1], size)
if upto == size then
    redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {upto, size, redis.call('PTTL', KEYS[1])}
"""


@dataclass
class _Lease:
    next: int  # the next place to hand out
    upto: int  # the last place of the block
    ends: float  # when the window ends (time.time())


def limit_of(key: str) -> int:
    """The limit a counter's key is for: limits' keys end in amount/multiples/granularity."""
    return int(key.rsplit("/", 3)[-3])


class LeasedRedisStorage(Storage):
    """limits' storage for the fixed-window strategy, over the runtime's Redis client
    (`leased+redis://`, with the client as the `client` option)."""

    STORAGE_SCHEME = ["leased+redis"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *, client: redis.Redis,
                 **options: object) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._redis = client
        self._script = client.register_script(_LEASE)
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._prune_at = PRUNE_FROM

    @property
    def base_exceptions(self) -> type[Exception]:
        return redis.RedisError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """This request's place in the window: from the process's block, else from a new one."""
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.ends > now and lease.next + amount - 1 <= lease.upto:
                lease.next += amount
                return lease.next - 1
        limit = limit_of(key)
        block = min(MAX_BLOCK, max(1, limit // 100))
        upto, size, pttl = self._script(keys=[key], args=[limit, block, amount, expiry, SHARE_OF_REST])
        place = upto - size + amount
        # Past the limit, the window's budget is spent for good: refuse here until it ends.
        fresh = _Lease(next=place + 1, upto=upto if place <= limit else 2**62,
                       ends=now + max(int(pttl), 0) / 1000)
        with self._lock:
            current = self._leases.get(key)
            if current is None or current.ends <= now or current.upto - current.next < fresh.upto - fresh.next:
                self._leases[key] = fresh
            if len(self._leases) > self._prune_at:
                self._leases = {k: v for k, v in self._leases.items() if v.ends > now}
                self._prune_at = max(PRUNE_FROM, 2 * len(self._leases))
        return place

    def get(self, key: str) -> int:
        """The places taken in the window: this process's view when it holds a block."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.ends > time.time():
                return lease.next - 1
        return int(cast(bytes | None, self._redis.get(key)) or 0)

    def get_expiry(self, key: str) -> float:
        """When the window ends (seconds since the epoch)."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.ends > time.time():
                return lease.ends
        return time.time() + max(cast(int, self._redis.pttl(key)), 0) / 1000

    def check(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def reset(self) -> int | None:
        with self._lock:
            self._leases.clear()
        return None

    def clear(self, key: str) -> None:
        with self._lock:
            self._leases.pop(key, None)
        self._redis.delete(key)
