"""Per-host call slots and the circuit breaker, kept in Redis."""
from __future__ import annotations

import time

import fakeredis

from shared.fairness import (
    SLOT_WAIT_SECONDS,
    Breaker,
    Gate,
    HostSlots,
    Line,
    Waiting,
    counts_against_host,
    host_of,
)
from shared.providers import ProviderError


def test_a_host_is_its_name_and_port_as_the_http_client_reads_them() -> None:
    assert host_of("https://IdP.example/token") == "idp.example:443"
    assert host_of("http://127.0.0.1:8001/token") == "127.0.0.1:8001"
    assert host_of("http://localhost:8001/t") != host_of("http://127.0.0.1:8001/t")


def test_timeouts_dropped_connections_and_5xx_count_against_a_host_4xx_do_not() -> None:
    assert counts_against_host(ProviderError("t", error="timeout"))
    assert counts_against_host(ProviderError("c", error="connection_error"))
    assert counts_against_host(ProviderError("x", status=502, error="http_502"))
    assert not counts_against_host(ProviderError("g", status=400, error="invalid_grant"))
    assert not counts_against_host(ProviderError("r", status=429, error="http_429"))


def test_slots_are_capped_per_host_and_given_back() -> None:
    slots = HostSlots(fakeredis.FakeRedis(), limit=3, lease_seconds=30)
    first = slots.acquire("a:443", 2)
    assert len(first) == 2
    assert len(slots.acquire("a:443", 5)) == 1, "only what is left of the cap"
    assert slots.acquire("a:443", 1) == []
    assert len(slots.acquire("b:443", 3)) == 3, "another host has slots of its own"
    slots.release("a:443", first)
    assert len(slots.acquire("a:443", 5)) == 2


def test_a_lease_of_a_worker_that_died_expires_while_others_live_on() -> None:
    slots = HostSlots(fakeredis.FakeRedis(), limit=2, lease_seconds=0.3)
    assert len(slots.acquire("a:443", 1)) == 1  # its worker dies: never released
    time.sleep(0.2)
    assert len(slots.acquire("a:443", 1)) == 1  # a live one, taken later
    assert slots.acquire("a:443", 1) == []
    time.sleep(0.15)  # the dead worker's lease is over; the live one is not
    assert len(slots.acquire("a:443", 2)) == 1


def test_the_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() -> None:
    breaker = Breaker(fakeredis.FakeRedis(), cooldown_seconds=0.3, probe_seconds=5, failures=5)
    breaker.record("a:443", 0, 4)
    breaker.record("a:443", 1, 0)  # an answer in between: the count starts again
    breaker.record("a:443", 0, 4)
    assert breaker.admit("a:443").calls is None
    breaker.record("a:443", 0, 1)
    shut = breaker.admit("a:443")
    assert shut.calls == 0 and 0 < shut.wait <= 0.3
    assert breaker.admit("b:443").calls is None, "other hosts are untouched"
    time.sleep(0.35)
    assert breaker.admit("a:443").calls == 1, "half-open: one probe"
    assert breaker.admit("a:443").calls == 0, "and only one"
    breaker.record("a:443", 0, 1)  # the probe failed: open again
    assert breaker.admit("a:443").calls == 0
    time.sleep(0.35)
    assert breaker.admit("a:443").calls == 1
    breaker.record("a:443", 1, 0)
    assert breaker.admit("a:443").calls is None


def test_admission_says_how_long_a_host_wants_waiting() -> None:
    client = fakeredis.FakeRedis()
    gate = Gate(client, limit=1, breaker_seconds=10, lease_seconds=30)
    leases, _ = gate.admit("a:443", 2)
    assert len(leases) == 1
    assert gate.admit("a:443", 1) == ([], SLOT_WAIT_SECONDS)
    gate.done("a:443", leases, alive=0, failed=5)
    refused, wait = gate.admit("a:443", 1)
    assert refused == [] and 9 < wait <= 10


def test_free_slots_are_those_no_live_lease_holds_and_a_renewed_lease_lives_on() -> None:
    slots = HostSlots(fakeredis.FakeRedis(), limit=3, lease_seconds=0.3)
    assert slots.free("a:443") == 3
    first, second = slots.acquire("a:443", 2)
    assert slots.free("a:443") == 1 and slots.free("b:443") == 3
    time.sleep(0.2)
    assert slots.renew("a:443", [first, "not-a-lease"]) == [first]
    time.sleep(0.2)
    assert slots.free("a:443") == 2, "the lease not renewed expired; the renewed one holds its slot"
    assert slots.renew("a:443", [second]) == [], "an expired lease is not renewed"
    assert slots.release("a:443", [first]) == 3


def test_a_line_gives_its_connections_in_order_the_front_first() -> None:
    line = Line(fakeredis.FakeRedis())
    line.join("a:443", ["c1", "c2", "c3"], breaker=True)
    line.join("a:443", ["c0a", "c0b"], breaker=True, front=True)  # their turn had come already
    line.join("a:443", ["s1"], breaker=False)
    line.join("b:443", ["d1"], breaker=True)
    assert line.take("a:443", 4) == [Waiting(["c0a", "c0b", "c1", "c2"], True)]
    assert line.take("a:443", 10) == [Waiting(["c3"], True), Waiting(["s1"], False)]
    assert line.take("a:443", 1) == [] and line.take("b:443", 5) == [Waiting(["d1"], True)]


def test_a_line_nothing_takes_from_is_stalled_and_an_empty_one_forgotten() -> None:
    client = fakeredis.FakeRedis()
    line = Line(client, stalled_seconds=0.2)
    line.join("a:443", ["c1", "c2"], breaker=True)
    line.join("b:443", ["d1"], breaker=True)
    assert line.stalled() == [], "a new line is moving"
    time.sleep(0.3)
    line.join("a:443", ["c3"], breaker=True)
    assert line.stalled() == ["a:443", "b:443"], "joining a line does not move it"
    line.take("a:443", 1)
    line.take("b:443", 1)
    assert line.stalled() == [], "taking moves it"
    time.sleep(0.3)
    assert line.stalled() == ["a:443"]
    assert client.smembers(Line.HOSTS) == {b"a:443"}, "b's line is empty: forgotten"
