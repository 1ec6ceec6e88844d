"""The hot-path cache: what it keeps, and what it refuses to keep."""
from __future__ import annotations

import time

import pytest

from web import caches
from web.caches import AnnouncedCache


@pytest.fixture
def cache() -> AnnouncedCache[str]:
    live: AnnouncedCache[str] = AnnouncedCache(ttl=30)
    live.clear(live=True)
    return live


def test_a_value_read_after_the_subscription_is_kept(cache: AnnouncedCache[str]) -> None:
    cache.put("conn_1", "conn_1", "row", caches.now())
    assert cache.get("conn_1") == "row"


def test_nothing_is_kept_before_the_process_is_subscribed_or_after_it_lost_redis() -> None:
    cache: AnnouncedCache[str] = AnnouncedCache(ttl=30)
    cache.put("conn_1", "conn_1", "row", caches.now())
    assert cache.get("conn_1") is None
    cache.clear(live=True)
    cache.put("conn_1", "conn_1", "row", caches.now())
    cache.clear(live=False)
    assert cache.get("conn_1") is None
    cache.put("conn_1", "conn_1", "row", caches.now())
    assert cache.get("conn_1") is None


def test_a_row_read_before_its_announcement_is_never_kept(cache: AnnouncedCache[str]) -> None:
    read_at = caches.now()  # the reader starts its query…
    cache.drop("conn_1")  # …a writer commits and announces meanwhile…
    cache.put("conn_1", "conn_1", "old row", read_at)  # …and the stale answer arrives
    assert cache.get("conn_1") is None
    cache.put("conn_1", "conn_1", "new row", caches.now())
    assert cache.get("conn_1") == "new row"


def test_a_row_read_before_the_caches_were_cleared_is_never_kept(cache: AnnouncedCache[str]) -> None:
    read_at = caches.now()
    cache.clear(live=True)  # a resubscription: announcements may have been missed
    cache.put("conn_1", "conn_1", "old row", read_at)
    assert cache.get("conn_1") is None


def test_an_announcement_drops_every_key_of_its_tenant_and_no_other(cache: AnnouncedCache[str]) -> None:
    for key_hash, tenant in (("h1", "ten_a"), ("h2", "ten_a"), ("h3", "ten_b")):
        cache.put(key_hash, tenant, tenant, caches.now())
    cache.drop("ten_a")
    assert (cache.get("h1"), cache.get("h2"), cache.get("h3")) == (None, None, "ten_b")


def test_an_entry_lives_ttl_seconds_from_the_read() -> None:
    cache: AnnouncedCache[str] = AnnouncedCache(ttl=0.2)
    cache.clear(live=True)
    cache.put("conn_1", "conn_1", "row", caches.now())
    assert cache.get("conn_1") == "row"
    time.sleep(0.25)
    assert cache.get("conn_1") is None
    cache.put("conn_1", "conn_1", "row", caches.now() - 0.3)  # a read that took longer than the TTL
    assert cache.get("conn_1") is None


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache: AnnouncedCache[str] = AnnouncedCache(ttl=0)
    cache.clear(live=True)
    cache.put("conn_1", "conn_1", "row", caches.now())
    assert cache.get("conn_1") is None


def test_the_cache_holds_at_most_maxsize_entries() -> None:
    cache: AnnouncedCache[str] = AnnouncedCache(ttl=30, maxsize=3)
    cache.clear(live=True)
    for n in range(5):
        cache.put(f"conn_{n}", f"conn_{n}", "row", caches.now())
    assert len(cache) == 3 and cache.get("conn_0") is None and cache.get("conn_4") == "row"
    cache.drop("conn_4")
    assert len(cache) == 2
