"""The Redis broker transport of every Celery app here: kombu's, with one Redis client per
channel instead of one built for every command.

kombu's Redis channel builds a new `redis.Redis` around its connection pool for each
command it sends without a client of its own (every publish, every queue size), and
building one costs more CPU than sending the command. The client kept here uses the
channel's own pool, so a Redis restart is survived as before: the pool replaces a dead
connection when it hands it out, and kombu's publish retry, if ever needed, replaces the
channel and so its client."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses one client for the commands it sends itself."""

    @cached_property
    def _own_client(self) -> redis.Redis:
        return self._create_client()  # type: ignore[attr-defined]  # kombu's, missing from its stubs

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        """The given client, or the channel's own."""
        yield client or self._own_client

    def _disconnect_pools(self) -> None:
        # The pool goes (after a fork, on close): so does the client around it.
        self.__dict__.pop("_own_client", None)
        super()._disconnect_pools()  # type: ignore[misc]  # kombu's, missing from its stubs


class Transport(kombu_redis.Transport):
    """kombu's Redis transport over the channel above."""

    Channel = Channel
