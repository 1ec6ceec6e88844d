"""Per-process caches of the token hot path, kept true by the two announcements.

An entry carries a tag (the connection id, or the tenant id of an API key); an
announcement drops every entry of its tag. A value may only be kept if it was read
after the last drop of its tag and after the last clear: a reader notes the time
before it reads the database and hands it to `put`, so a row read before a write
can never outlive that write's announcement. Entries also expire after `ttl`
seconds from that time, which bounds a missed announcement. While the process is
not subscribed (at start, after a lost Redis connection) nothing is kept."""
from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

V = TypeVar("V")


def now() -> float:
    """The clock of the caches (monotonic seconds)."""
    return time.monotonic()


class AnnouncedCache(Generic[V]):
    """Key → value for at most `ttl` seconds, dropped by tag on an announcement."""

    def __init__(self, ttl: float, maxsize: int = 100_000) -> None:
        self.ttl = ttl
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, str, V]] = {}  # key → (expires, tag, value)
        self._keys: dict[str, set[str]] = {}  # tag → keys
        self._dropped: dict[str, float] = {}  # tag → when it was last dropped, oldest first
        self._cleared = now()
        self._live = False

    def get(self, key: str) -> V | None:
        """The value, unless absent or expired."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now():
            return None
        return entry[2]

    def put(self, key: str, tag: str, value: V, read_at: float) -> None:
        """Keep a value read from the database after `read_at`, unless its tag was
        dropped (or everything cleared) since, or the process is not subscribed."""
        with self._lock:
            if not self._live or read_at <= self._cleared or read_at <= self._dropped.get(tag, float("-inf")):
                return
            if key not in self._entries and len(self._entries) >= self._maxsize:
                self._forget(next(iter(self._entries)))
            self._forget(key)
            self._entries[key] = (read_at + self.ttl, tag, value)
            self._keys.setdefault(tag, set()).add(key)

    def drop(self, tag: str) -> None:
        """Forget every entry of a tag, and refuse values of it read before now."""
        with self._lock:
            at = now()
            self._dropped.pop(tag, None)
            self._dropped[tag] = at  # re-inserted: the dict stays ordered by time
            for key in self._keys.pop(tag, ()):
                self._entries.pop(key, None)
            # A value read longer than ttl ago would be expired on arrival anyway.
            while self._dropped:
                oldest, when = next(iter(self._dropped.items()))
                if when > at - self.ttl:
                    break
                del self._dropped[oldest]

    def clear(self, live: bool) -> None:
        """Forget everything; keep values again only if `live` (subscribed)."""
        with self._lock:
            self._entries.clear()
            self._keys.clear()
            self._dropped.clear()
            self._cleared = now()
            self._live = live

    def __len__(self) -> int:
        return len(self._entries)

    def _forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._keys.get(entry[1])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys[entry[1]]
