"""The browser flow's rate limit: one budget per client address for every page of the flow
(BROWSER_RATE_LIMIT, e.g. "120/minute" or "10/second;500/hour"), counted in fixed windows
in Redis.

A page sends its count in the same round trip as its own first Redis command (the callback
takes its state with it), so the limit costs no round trip and none of flask-limiter's
per-request bookkeeping, which stays with the API. A refused request still counts, as with
flask-limiter. Without Redis, nothing is limited (the pages that need Redis fail anyway)."""
from __future__ import annotations

import logging
import time
from typing import Any

import redis
from flask import Response, current_app
from flask_limiter.util import get_remote_address
from limits import parse_many
from redis.client import Pipeline

from web.limits import MAX_RETRY_AFTER_SECONDS, refusal

log = logging.getLogger(__name__)
KEY_PREFIX = "ratelimit:browser"


class AddressLimit:
    """Fixed windows per client address, one per limit of the spec."""

    def __init__(self, spec: str) -> None:
        self._windows = [(item.amount, item.get_expiry()) for item in parse_many(spec)]

    def count(self, pipe: Pipeline, address: str, now: float) -> None:
        """Queue one hit on every window: SET NX with the window's lifetime, then INCR."""
        for amount, seconds in self._windows:
            key = f"{KEY_PREFIX}:{address}:{amount}/{seconds}s:{int(now // seconds)}"
            pipe.set(key, 0, nx=True, ex=seconds + 1)
            pipe.incr(key)

    def wait(self, replies: list[Any], now: float) -> int | None:
        """Seconds until every breached window has reset, or None when the hit is within
        every limit; `replies` are those of the commands count() queued."""
        counts = replies[1::2]
        waits = [seconds - int(now % seconds) for (amount, seconds), count in zip(self._windows, counts, strict=True)
                 if count > amount]
        return min(max(waits), MAX_RETRY_AFTER_SECONDS) if waits else None


def admit(pipe: Pipeline, queued: int) -> tuple[Response | None, list[Any]]:
    """Execute `pipe`, which holds `queued` commands of the page, with this request's count:
    a 429 answer when the client is over the limit (else None), and the page's replies."""
    limit: AddressLimit = current_app.extensions["browser_limit"]
    now = time.time()
    limit.count(pipe, get_remote_address(), now)
    replies = pipe.execute()
    wait = limit.wait(replies[queued:], now)
    return (refusal(wait) if wait else None), replies[:queued]


def limit_page(client: redis.Redis) -> Response | None:
    """Count a page that sends nothing else to Redis first; None when it may be served
    (also when Redis is unavailable: the limit fails open)."""
    try:
        refused, _ = admit(client.pipeline(transaction=False), 0)
    except redis.RedisError as error:
        log.warning("browser rate limit: Redis unavailable (%s); not limiting", type(error).__name__)
        return None
    return refused
