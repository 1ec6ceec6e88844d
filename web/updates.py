"""One Redis subscription per web process: it wakes the requests waiting on a
connection and keeps the process's hot-path caches true.

- A connection id on `UPDATES_CHANNEL` drops that connection's cached row and
  wakes its waiters.
- A tenant id on `API_KEYS_CHANNEL` drops that tenant's cached API keys.
- Every (re)subscription, including one redis-py makes by itself after a lost
  connection, and every lost connection clears both caches: what was announced
  meanwhile is unknown."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from shared.refreshes import UPDATES_CHANNEL
from shared.tenants import API_KEYS_CHANNEL
from web.caches import AnnouncedCache

log = logging.getLogger(__name__)
CHANNELS = (UPDATES_CHANNEL, API_KEYS_CHANNEL)


class UpdateListener:
    """Waiters register an Event per connection id; a daemon thread sets it when a
    worker announces that connection, after dropping the cached row. The thread
    starts on first use, so after gunicorn has forked."""

    def __init__(self, client: redis.Redis, cache_seconds: float = 0.0) -> None:
        self._redis = client
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self.connections: AnnouncedCache[Any] = AnnouncedCache(cache_seconds)
        self.api_keys: AnnouncedCache[str] = AnnouncedCache(cache_seconds)

    def _run(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                pubsub.subscribe(*CHANNELS)
                for message in pubsub.listen():
                    self._handle(message)
            except redis.RedisError as error:
                self._clear(live=False)
                log.warning("update listener lost Redis (%s); resubscribing", type(error).__name__)
                time.sleep(0.5)

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"].decode()
        if kind == "subscribe":
            # Announcements may have been missed until now; caching starts once
            # both channels are heard.
            live = message["data"] == len(CHANNELS)
            self._clear(live)
            if live:
                self._subscribed.set()
        elif kind == "message" and channel == UPDATES_CHANNEL:
            connection_id = message["data"].decode()
            self.connections.drop(connection_id)
            self._wake(connection_id)
        elif kind == "message" and channel == API_KEYS_CHANNEL:
            self.api_keys.drop(message["data"].decode())

    def _clear(self, live: bool) -> None:
        self.connections.clear(live)
        self.api_keys.clear(live)

    def _wake(self, connection_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(connection_id, ()):
                event.set()

    def start(self, wait: float = 0.0) -> None:
        """Start the thread once; wait up to `wait` seconds for its subscription."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="update-listener", daemon=True)
                    self._thread.start()
        if wait:
            self._subscribed.wait(timeout=wait)

    @contextmanager
    def watch(self, connection_id: str) -> Iterator[threading.Event]:
        """An Event set whenever the connection is announced, for the `with` block."""
        self.start(wait=2)
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(connection_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._waiters[connection_id]
                waiters.discard(event)
                if not waiters:
                    del self._waiters[connection_id]
