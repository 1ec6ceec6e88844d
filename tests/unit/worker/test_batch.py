"""`refresh_chunk`: many connections refreshed together against a token endpoint on
loopback, each ending exactly as the single refresh would."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared import refreshes
from shared.fairness import HostSlots, Turns, host_of
from shared.locks import RefreshLock
from shared.queue import REFRESH_BATCH, REFRESH_CONNECTION
from shared.runtime import Runtime
from shared.tokens import fenced_update
from tests.unit.worker.conftest import Reply, TokenEndpoint, connections_at, history, stored
from worker.batch import CHUNK, Admitted, Route, _by_route, _cut, refresh_chunk


class RecordingCelery:
    """Records the tasks a chunk sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        self.sent.append((name, args, options))


def test_a_chunk_refreshes_every_due_connection_with_one_call_each(worker_runtime: Runtime,
                                                                   endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    ids = connections_at(rt, endpoint.url, count=4)
    fresh = connections_at(rt, endpoint.url, expires_in=3000)
    refreshes.claim(rt.redis, ids + fresh)
    outcomes = refresh_chunk(rt, RecordingCelery(), ids + fresh)  # type: ignore[arg-type]
    assert outcomes["refreshed"] == 4 and outcomes["not_needed"] == 1
    assert sorted(endpoint.grants()) == [f"old-rt-{n}" for n in range(4)]
    for connection_id in ids:
        row = stored(rt, connection_id)
        assert row.version == 2 and rt.cipher.decrypt(row.refresh_token_enc or "") == "new-rt"
        assert history(rt, connection_id) == ["refreshed"]
    assert stored(rt, fresh[0]).version == 1
    assert not any(rt.redis.exists(refreshes.queued_key(cid)) for cid in ids + fresh), "markers cleared"
    assert not any(rt.redis.exists(f"refresh:{cid}") for cid in ids), "locks released"


def test_each_failure_class_in_a_chunk_ends_as_a_single_refresh_would(worker_runtime: Runtime,
                                                                      endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    reauth, transient, limited, held = connections_at(rt, endpoint.url, count=4)
    answers = {"old-rt-0": Reply(400, {"error": "invalid_grant"}), "old-rt-1": Reply(503, b"down"),
               "old-rt-2": Reply(429, {}, {"Retry-After": "5"}), "old-rt-3": Reply(429, {}, {"Retry-After": "900"})}
    celery = RecordingCelery()
    # A chunk's calls are concurrent, so answers would meet calls in any order: one chunk each.
    outcomes = {}
    for connection_id, reply in zip((reauth, transient, limited, held), answers.values(), strict=True):
        endpoint.replies.append(reply)
        outcomes[connection_id] = refresh_chunk(rt, celery, [connection_id])  # type: ignore[arg-type]
    assert outcomes[reauth]["needs_reauth"] == 1 and stored(rt, reauth).status == "needs_reauth"
    assert history(rt, reauth) == ["needs_reauth"]
    assert outcomes[transient]["failed"] == 1 and stored(rt, transient).refresh_failures == 1
    assert history(rt, transient) == ["refresh_failed"]
    assert outcomes[limited]["rate_limited"] == 1 and outcomes[held]["rate_limited"] == 1
    retried = {args[0]: options for name, args, options in celery.sent if name == REFRESH_CONNECTION}
    assert set(retried) == {transient, limited}, "retries continue on the single path"
    assert retried[limited]["countdown"] == 5 and retried[transient]["retries"] == 1
    assert 0.5 <= retried[transient]["countdown"] <= 1
    assert rt.redis.exists(refreshes.queued_key(transient)) and rt.redis.exists(refreshes.queued_key(limited))
    assert 800 < rt.redis.ttl(refreshes.queued_key(held)) <= 900, "a long Retry-After holds everyone off"
    assert not rt.redis.exists(refreshes.queued_key(reauth))


def test_a_connection_locked_by_another_refresh_is_handed_to_the_single_path(worker_runtime: Runtime,
                                                                            endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    locked, free = connections_at(rt, endpoint.url, count=2)
    lock = RefreshLock(rt.redis, locked, 30)
    assert lock.acquire()
    celery = RecordingCelery()
    outcomes = refresh_chunk(rt, celery, [locked, free])  # type: ignore[arg-type]
    assert outcomes["lock_busy"] == 1 and outcomes["refreshed"] == 1
    assert endpoint.grants() == ["old-rt-1"]
    assert [(name, args) for name, args, _ in celery.sent] == [(REFRESH_CONNECTION, [locked])]
    assert rt.redis.get(f"refresh:{locked}") == lock.local.token, "another's lock is left alone"


def test_a_chunk_larger_than_its_hosts_cap_goes_in_turns(worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime  # 4 calls per host
    ids = connections_at(rt, endpoint.url, count=10)
    endpoint.default = Reply(delay=0.1)
    celery = RecordingCelery()
    assert refresh_chunk(rt, celery, ids)["refreshed"] == 10  # type: ignore[arg-type]
    assert endpoint.most_in_flight == 4 and len(endpoint.forms) == 10
    assert celery.sent == []


def test_a_chunk_whose_host_has_no_free_slot_is_queued_again_holding_nothing(worker_runtime: Runtime,
                                                                            endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    ids = connections_at(rt, endpoint.url, count=3)
    refreshes.claim(rt.redis, ids)
    slots = HostSlots(rt.redis, limit=4, lease_seconds=30)
    taken = slots.acquire(host_of(endpoint.url), 4)  # another worker's calls
    celery = RecordingCelery()
    assert refresh_chunk(rt, celery, ids)["deferred"] == 3  # type: ignore[arg-type]
    assert endpoint.forms == []
    ((name, (later,), options),) = celery.sent
    assert name == REFRESH_BATCH and sorted(later) == sorted(ids)
    turn = options["kwargs"].pop("turn")
    assert options["kwargs"] == {"host": host_of(endpoint.url), "breaker": True}
    assert 4 <= options["countdown"] <= 6, "a turn goes by itself if nothing wakes it"
    assert all(rt.redis.exists(refreshes.queued_key(cid)) for cid in ids), "still queued: nobody queues them twice"
    assert not any(rt.redis.exists(f"refresh:{cid}") for cid in ids), "no lock held while waiting"
    assert all(stored(rt, cid).version == 1 for cid in ids)
    # Another worker's calls end: the first chunk to finish at that host wakes the turn at once.
    slots.release(host_of(endpoint.url), taken)
    (other,) = connections_at(rt, endpoint.url)
    woken = RecordingCelery()
    assert refresh_chunk(rt, woken, [other])["refreshed"] == 1  # type: ignore[arg-type]
    assert [(name, sorted(args[0])) for name, args, _ in woken.sent] == [(REFRESH_BATCH, sorted(ids))]
    assert not Turns(rt.redis).take(host_of(endpoint.url), turn), "the turn's own message will find it taken"
    slots.release(host_of(endpoint.url), taken)
    assert refresh_chunk(rt, RecordingCelery(), later)["refreshed"] == 3  # type: ignore[arg-type]


def test_a_stale_answer_in_a_chunk_is_dropped_and_the_rest_written(worker_runtime: Runtime,
                                                                   endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    ids = connections_at(rt, endpoint.url, count=3)
    endpoint.default = Reply(delay=0.3)

    def meanwhile() -> None:
        time.sleep(0.15)
        with rt.db.session() as session:
            assert fenced_update(session, ids[0], 1, {"last_error": "reauthorized meanwhile"})

    writer = threading.Thread(target=meanwhile)
    writer.start()
    outcomes = refresh_chunk(rt, RecordingCelery(), ids)  # type: ignore[arg-type]
    writer.join()
    assert outcomes["stale"] == 1 and outcomes["refreshed"] == 2
    assert rt.cipher.decrypt(stored(rt, ids[0]).access_token_enc or "") == "old-at-0"
    assert history(rt, ids[0]) == [] and history(rt, ids[1]) == ["refreshed"]


def test_a_page_is_cut_into_chunks_of_one_host_each_that_name_it(worker_runtime: Runtime,
                                                                  endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    other = TokenEndpoint()
    try:
        first = connections_at(rt, endpoint.url, count=CHUNK + 1)
        second = connections_at(rt, other.url, count=3)
        page = [cid for pair in zip(first[:3], second, strict=True) for cid in pair] + first[3:]
        integrations = [stored(rt, cid).integration_id for cid in page]
        page.append("conn_of_an_integration_gone")
        integrations.append("int_gone")
        celery = RecordingCelery()
        assert _cut(celery, _by_route(rt, page, integrations)) == 4  # type: ignore[arg-type]
    finally:
        other.close()
    chunks = [(options.get("kwargs", {}), ids) for name, (ids,), options in celery.sent if name == REFRESH_BATCH]
    first_route, second_route = Route(host_of(endpoint.url), True).kwargs(), Route(host_of(other.url), True).kwargs()
    assert [(route, len(ids)) for route, ids in chunks] == [
        (first_route, CHUNK), (first_route, 1), (second_route, 3), ({}, 1)]
    assert sorted(cid for _, ids in chunks for cid in ids) == sorted(page)
    assert chunks[2][1] == second and chunks[3][1] == ["conn_of_an_integration_gone"]
    assert _by_route(rt, page, None) == {None: page}, "a page sent without its integrations is cut as it comes"


def test_slots_taken_before_the_locks_are_used_and_those_not_needed_given_back(worker_runtime: Runtime,
                                                                              endpoint: TokenEndpoint) -> None:
    rt = worker_runtime  # 4 calls per host
    due = connections_at(rt, endpoint.url, count=2)
    fresh = connections_at(rt, endpoint.url, expires_in=3000)
    route = Route(host_of(endpoint.url), True)
    slots = HostSlots(rt.redis, limit=4, lease_seconds=30)
    leases = slots.acquire(route.host, 4)
    outcomes = refresh_chunk(rt, RecordingCelery(), due + fresh, Admitted(route, leases))  # type: ignore[arg-type]
    assert outcomes["refreshed"] == 2 and outcomes["not_needed"] == 1 and len(endpoint.forms) == 2
    assert rt.redis.zcard(HostSlots.key(route.host)) == 0, "every slot given back"
    assert len(slots.acquire(route.host, 4)) == 4
