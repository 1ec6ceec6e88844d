"""Named Redis locks."""
from __future__ import annotations

from uuid import uuid1

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


def take_refresh_locks(client: redis.Redis, connection_ids: list[str], ttl_seconds: float) -> dict[str, str]:
    """Take many `refresh:{id}` locks in one pipeline, exactly as `RefreshLock.acquire`
    takes one (`SET NX PX` with a random owner token); return id → token of those taken."""
    tokens = [uuid1().hex for _ in connection_ids]
    pipe = client.pipeline(transaction=False)
    for connection_id, token in zip(connection_ids, tokens, strict=True):
        pipe.set(f"refresh:{connection_id}", token, nx=True, px=int(ttl_seconds * 1000))
    taken = pipe.execute()
    return {cid: token for cid, token, ok in zip(connection_ids, tokens, taken, strict=True) if ok}


def release_refresh_locks(client: redis.Redis, held: dict[str, str]) -> list[str]:
    """Release locks taken by `take_refresh_locks` with redis-py's own compare-and-delete,
    in one pipeline; return the ids whose lock had expired (someone else may hold it now)."""
    if not held:
        return []
    release = client.register_script(Lock.LUA_RELEASE_SCRIPT)
    pipe = client.pipeline(transaction=False)
    for connection_id, token in held.items():
        release(keys=[f"refresh:{connection_id}"], args=[token], client=pipe)
    return [cid for cid, released in zip(held, pipe.execute(), strict=True) if not released]
