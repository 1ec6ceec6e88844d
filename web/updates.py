"""One Redis subscription per web process that wakes the requests waiting on a connection."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared.refreshes import UPDATES_CHANNEL

log = logging.getLogger(__name__)


class UpdateListener:
    """Waiters register an Event per connection id; a daemon thread sets it when a
    worker announces that connection. The thread starts on first use, so after
    gunicorn has forked."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def _run(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(UPDATES_CHANNEL)
                self._subscribed.set()
                for message in pubsub.listen():
                    if message["type"] == "message":
                        self._wake(message["data"].decode())
            except redis.RedisError as error:
                log.warning("update listener lost Redis (%s); resubscribing", type(error).__name__)
                time.sleep(0.5)

    def _wake(self, connection_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(connection_id, ()):
                event.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="update-listener", daemon=True)
                self._thread.start()
        self._subscribed.wait(timeout=2)

    @contextmanager
    def watch(self, connection_id: str) -> Iterator[threading.Event]:
        """An Event set whenever the connection is announced, for the `with` block."""
        self._start()
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
