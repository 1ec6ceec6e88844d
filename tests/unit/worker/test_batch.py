"""`refresh_chunk`: many connections refreshed together against a token endpoint on
loopback, each ending exactly as the single refresh would."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from shared import refreshes
from shared.fairness import HostSlots, host_of
from shared.locks import RefreshLock
from shared.queue import REFRESH_BATCH, REFRESH_CONNECTION
from shared.runtime import Runtime
from shared.tokens import fenced_update
from tests.unit.worker.conftest import Reply, TokenEndpoint, connections_at, history, stored
from worker import batch
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


def sent_chunks(celery: RecordingCelery) -> list[tuple[dict[str, Any], list[str], list[str]]]:
    """The chunks a task queued: each one's route, connections and leases (if it holds any)."""
    chunks = []
    for name, (ids,), options in celery.sent:
        assert name == REFRESH_BATCH
        route = dict(options.get("kwargs", {}))
        chunks.append((route, ids, route.pop("leases", [])))
    return chunks


def waiting(rt: Runtime, url: str) -> list[str]:
    """The connections in the line of the URL's host, in order."""
    return [entry.decode().partition(":")[2] for entry in rt.redis.lrange(f"provider-line:{host_of(url)}", 0, -1)]


def test_a_chunk_larger_than_its_hosts_cap_sends_the_rest_holding_the_slots_its_calls_gave_back(
        worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime  # 4 calls per host
    ids = connections_at(rt, endpoint.url, count=10)
    refreshes.claim(rt.redis, ids)
    endpoint.default = Reply(delay=0.1)
    celery = RecordingCelery()
    outcomes = refresh_chunk(rt, celery, ids)  # type: ignore[arg-type]
    assert (outcomes["refreshed"], outcomes["deferred"]) == (4, 6)
    assert endpoint.most_in_flight == 4 and len(endpoint.forms) == 4
    # The rest joined the front of the host's line, unlocked, before the calls; the 4 slots
    # the calls gave back went at once to 4 of them, in one message that holds them.
    ((route, woken, leases),) = sent_chunks(celery)
    assert route == Route(host_of(endpoint.url), True).kwargs() and len(woken) == len(leases) == 4
    assert HostSlots(rt.redis, limit=4, lease_seconds=30).renew(host_of(endpoint.url), leases) == leases
    rest = [cid for cid in ids if stored(rt, cid).version == 1]
    assert sorted(woken + waiting(rt, endpoint.url)) == sorted(rest) and len(rest) == 6
    assert not any(rt.redis.exists(f"refresh:{cid}") for cid in rest), "no lock held while waiting"
    assert all(rt.redis.exists(refreshes.queued_key(cid)) for cid in rest), "still queued: nobody queues them twice"


def test_a_chunk_whose_host_has_no_free_slot_waits_in_line_holding_nothing(worker_runtime: Runtime,
                                                                          endpoint: TokenEndpoint) -> None:
    rt = worker_runtime
    route = Route(host_of(endpoint.url), True)
    ids = connections_at(rt, endpoint.url, count=3)
    refreshes.claim(rt.redis, ids)
    slots = HostSlots(rt.redis, limit=4, lease_seconds=30)
    taken = slots.acquire(route.host, 4)  # another worker's calls
    celery = RecordingCelery()
    assert refresh_chunk(rt, celery, ids)["deferred"] == 3  # type: ignore[arg-type]
    assert endpoint.forms == [] and celery.sent == [], "waiting in line costs no message"
    assert sorted(waiting(rt, endpoint.url)) == sorted(ids)
    assert all(rt.redis.exists(refreshes.queued_key(cid)) for cid in ids), "still queued: nobody queues them twice"
    assert not any(rt.redis.exists(f"refresh:{cid}") for cid in ids), "no lock held while waiting"
    assert all(stored(rt, cid).version == 1 for cid in ids)
    # Those calls end; the next chunk to give slots back at that host finds 4 free and
    # sends the line's 3 in one message holding 3 of them.
    slots.release(route.host, taken)
    (other,) = connections_at(rt, endpoint.url)
    woken = RecordingCelery()
    assert refresh_chunk(rt, woken, [other])["refreshed"] == 1  # type: ignore[arg-type]
    ((kwargs, later, leases),) = sent_chunks(woken)
    assert kwargs == route.kwargs() and sorted(later) == sorted(ids) and waiting(rt, endpoint.url) == []
    assert slots.free(route.host) == 1, "the message holds its slots"
    outcomes = refresh_chunk(rt, RecordingCelery(), later, Admitted(route, slots.renew(route.host, leases)))  # type: ignore[arg-type]
    assert outcomes["refreshed"] == 3 and slots.free(route.host) == 4


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


def test_a_page_joins_its_hosts_lines_and_as_many_go_at_once_as_each_host_has_free_slots(
        worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt = worker_runtime  # 4 calls per host
    other = TokenEndpoint()
    try:
        first = connections_at(rt, endpoint.url, count=CHUNK + 1)
        second = connections_at(rt, other.url, count=3)
        page = [cid for pair in zip(first[:3], second, strict=True) for cid in pair] + first[3:]
        integrations = [stored(rt, cid).integration_id for cid in page]
        page.append("conn_of_an_integration_gone")
        integrations.append("int_gone")
        HostSlots(rt.redis, limit=4, lease_seconds=30).acquire(host_of(endpoint.url), 1)  # a call in flight there
        celery = RecordingCelery()
        assert _cut(rt, celery, _by_route(rt, page, integrations)) == 1 + 3 + 3  # type: ignore[arg-type]
    finally:
        other.close()
    chunks = sent_chunks(celery)
    first_route, second_route = Route(host_of(endpoint.url), True).kwargs(), Route(host_of(other.url), True).kwargs()
    assert [(route, ids) for route, ids, _ in chunks] == [
        ({}, ["conn_of_an_integration_gone"]), (first_route, first[:3]), (second_route, second)]
    assert [len(leases) for _, _, leases in chunks] == [0, 3, 3], "each chunk of a host holds its slots"
    assert waiting(rt, endpoint.url) == first[3:], "the rest wait in line, in the page's order"
    assert waiting(rt, other.url) == []
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


def test_a_chunks_slots_go_back_once_its_calls_are_over_before_its_write(
        worker_runtime: Runtime, endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime  # 4 calls per host
    ids = connections_at(rt, endpoint.url, count=3)
    slots = HostSlots(rt.redis, limit=4, lease_seconds=30)
    free_while_writing: list[int] = []
    write = batch._write

    def watched(*args: Any) -> None:
        free_while_writing.append(slots.free(host_of(endpoint.url)))
        write(*args)

    monkeypatch.setattr(batch, "_write", watched)
    assert refresh_chunk(rt, RecordingCelery(), ids)["refreshed"] == 3  # type: ignore[arg-type]
    assert free_while_writing == [4]
