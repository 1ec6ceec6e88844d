"""Named Redis locks."""
from __future__ import annotations

import secrets

import redis
from redis.lock import Lock


class RefreshLock(Lock):
    """`refresh:{connection_id}`: only its holder calls the provider for that connection.

    redis-py's Lock takes it with `SET NX PX` and a random owner token, and releases
    it with a Lua compare-and-delete, so an expired holder can never free a lock that
    someone else now holds. The TTL stays above the HTTP timeout."""

    def __init__(self, client: redis.Redis, connection_id: str, ttl_seconds: float) -> None:
        super().__init__(client, f"refresh:{connection_id}", timeout=ttl_seconds, blocking=False)

    def remaining_seconds(self) -> float:
        """How long the current holder (if any) keeps the lock."""
        return max(self.redis.pttl(self.name), 0) / 1000


# `SET NX PX` of each key with its own owner token, as `RefreshLock.acquire` takes one;
# answers 1 (taken) or 0 per key.
_TAKE = """
local taken = {}
for i, key in ipairs(KEYS) do
  taken[i] = redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ARGV[1]) and 1 or 0
end
return taken
"""
# redis-py's compare-and-delete (`Lock.LUA_RELEASE_SCRIPT`) of each key; answers the
# positions of the keys whose token was no longer there (the lock had expired).
_RELEASE = """
local expired = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then redis.call('DEL', key) else expired[#expired + 1] = i end
end
return expired
"""


def _key(connection_id: str) -> str:
    return f"refresh:{connection_id}"


def take_refresh_locks(client: redis.Redis, connection_ids: list[str], ttl_seconds: float) -> dict[str, str]:
    """Take many `refresh:{id}` locks in one round trip, each exactly as `RefreshLock.acquire`
    takes one (`SET NX PX` with a random owner token); return id → token of those taken."""
    if not connection_ids:
        return {}
    tokens = [secrets.token_hex(16) for _ in connection_ids]
    taken = client.register_script(_TAKE)(keys=[_key(cid) for cid in connection_ids],
                                          args=[int(ttl_seconds * 1000), *tokens])
    return {cid: token for cid, token, ok in zip(connection_ids, tokens, taken, strict=True) if ok}


def release_refresh_locks(client: redis.Redis, held: dict[str, str]) -> list[str]:
    """Release locks taken by `take_refresh_locks` in one round trip, each with redis-py's
    compare-and-delete; return the ids whose lock had expired (someone else may hold it now)."""
    if not held:
        return []
    ids = list(held)
    expired = client.register_script(_RELEASE)(keys=[_key(cid) for cid in ids], args=list(held.values()))
    return [ids[position - 1] for position in expired]
