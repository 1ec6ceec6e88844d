"""Named Redis locks."""
from __future__ import annotations

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
