"""Queueing refreshes once, and telling waiters that a connection changed.

A short-lived marker per connection keeps it from being queued twice, whether the
sweep or an API call asks; the worker clears it when the refresh is over."""
from __future__ import annotations

from collections.abc import Iterable

import redis
from celery import Celery

from shared.queue import INTERACTIVE_QUEUE, REFRESH_CONNECTION

# Longer than a queued refresh normally waits plus its retries; after a crash the
# marker expires and the next sweep queues the connection again.
QUEUED_TTL_SECONDS = 300
UPDATES_CHANNEL = "connection-updates"


def queued_key(connection_id: str) -> str:
    """The marker of a queued or running refresh."""
    return f"refresh-queued:{connection_id}"


def claim(client: redis.Redis, connection_ids: Iterable[str]) -> list[str]:
    """Mark connections as queued; return those that were not queued already."""
    ids = list(connection_ids)
    pipe = client.pipeline(transaction=False)
    for connection_id in ids:
        pipe.set(queued_key(connection_id), 1, nx=True, ex=QUEUED_TTL_SECONDS)
    return [connection_id for connection_id, fresh in zip(ids, pipe.execute(), strict=True) if fresh]


def request_refresh(client: redis.Redis, celery: Celery, connection_id: str, seen: str | None = None) -> bool:
    """Queue one refresh unless one is queued or running (single flight).

    `seen` (a `refresh_mark`) forces a refresh unless another one has landed since that
    mark was read; without it the worker refreshes only if the connection is due."""
    if not claim(client, [connection_id]):
        return False
    kwargs = {"seen": seen} if seen is not None else {}
    celery.send_task(REFRESH_CONNECTION, args=[connection_id], kwargs=kwargs, queue=INTERACTIVE_QUEUE,
                     ignore_result=True)
    return True


def keep_queued(client: redis.Redis, connection_id: str, seconds: float = QUEUED_TTL_SECONDS) -> None:
    """Keep the marker (a retry is pending, or a long Retry-After holds everyone off)
    and wake whoever waits on the connection; only its id travels."""
    pipe = client.pipeline(transaction=False)
    pipe.set(queued_key(connection_id), 1, ex=max(1, round(seconds)))
    pipe.publish(UPDATES_CHANNEL, connection_id)
    pipe.execute()


def announce(client: redis.Redis, connection_id: str) -> None:
    """Tell every web process that the connection changed (after the commit): its
    cached row is dropped and whoever waits on it wakes up. Only its id travels."""
    client.publish(UPDATES_CHANNEL, connection_id)


def finish(client: redis.Redis, connection_id: str) -> None:
    """Clear the marker and wake whoever waits on the connection."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(queued_key(connection_id))
    pipe.publish(UPDATES_CHANNEL, connection_id)
    pipe.execute()


# KEYS: the markers of the connections finished, then of those kept; ARGV: the channel,
# each connection's id, then each kept marker's seconds. Every id is published.
_SETTLE = """
local n = #KEYS
local finished = n - (#ARGV - 1 - n)
for i, key in ipairs(KEYS) do
  if i <= finished then redis.call('DEL', key)
  else redis.call('SET', key, 1, 'EX', ARGV[1 + n + i - finished]) end
  redis.call('PUBLISH', ARGV[1], ARGV[1 + i])
end
"""


def settle(client: redis.Redis, finished: Iterable[str], kept: dict[str, float]) -> None:
    """`finish` and `keep_queued` for many connections in one round trip."""
    ids = [*finished, *kept]
    if ids:
        client.register_script(_SETTLE)(keys=[queued_key(cid) for cid in ids], args=[
            UPDATES_CHANNEL, *ids, *(max(1, round(seconds)) for seconds in kept.values())])
