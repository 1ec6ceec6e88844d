"""`refresh_batch`: a sweep page refreshed together.

The sweep sends a page with each connection's integration. The page's connections join
the line of their provider host (a route), and as many as the host has free call slots
for are taken from its head at once, in chunks of at most `CHUNK`, one message each, so
that every worker process takes a share. A chunk first takes its host's slots (one round
trip; with none, it goes back to the front of the line having locked and read nothing),
then costs one script call for its locks, one `SELECT`, a burst of concurrent provider
calls, one transaction that writes every answer fenced (one statement on PostgreSQL),
with the events, and one script call that releases the locks and settles the markers.
Giving its slots back, it takes as many connections from the line and queues them: a
host's slots are kept busy by the chunks finishing there, and a connection waiting for
a slot costs no message until one is free for it.

Single flight and fencing stay per connection: the locks are the same `refresh:{id}`
locks `refresh_connection` takes, re-read under the lock, and each write is fenced by
the version read. The crash window is the chunk's slowest call: an answer waits for
nothing but the other answers of its chunk (each call bounded by the HTTP timeout),
then all are committed at once."""
from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import select

from shared import refreshes
from shared.fairness import SLOT_WAIT_SECONDS, Line, counts_against_host, host_of
from shared.integrations import oauth_client, server_urls
from shared.locks import release_refresh_locks, take_refresh_locks
from shared.models import Connection, Integration, utcnow
from shared.providers import OAuthClient, ProviderError, TokenSet
from shared.providers import refresh as post_refresh
from shared.queue import REFRESH_BATCH, REFRESH_CONNECTION
from shared.runtime import Runtime
from shared.tokens import fenced_update_many, needs_refresh
from worker.app import celery
from worker.refresh import (
    NO_REFRESH_TOKEN,
    Outcome,
    gate,
    record_success_events,
    refreshed_values,
    uses_breaker,
    write_failure,
)
from worker.task import KeeperTask

log = logging.getLogger(__name__)

CHUNK = 32
CALL_THREADS = 128  # per process: the provider calls of every chunk running in it

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _calls() -> ThreadPoolExecutor:
    """The process's pool of provider-call threads, made on first use (after any fork)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="provider-call")
        return _pool


@dataclass(frozen=True)
class Route:
    """Where a chunk's calls go: the provider host, and whether its breaker guards them."""

    host: str
    breaker: bool

    def kwargs(self) -> dict[str, Any]:
        """How a queued chunk names its route."""
        return {"host": self.host, "breaker": self.breaker}


@dataclass
class Call:
    """One connection of a chunk on its way to the provider, and its answer."""

    connection: Connection
    client: OAuthClient
    route: Route
    answer: TokenSet | ProviderError | None = None


@dataclass(frozen=True)
class Admitted:
    """Slots a chunk took for its route before any lock or read."""

    route: Route
    leases: list[str]


def _post(rt: Runtime, call: Call) -> Call:
    assert call.connection.refresh_token_enc
    refresh_token = rt.cipher.decrypt(call.connection.refresh_token_enc)
    try:
        call.answer = post_refresh(call.client, refresh_token=refresh_token, timeout=rt.settings.http_timeout_seconds)
    except ProviderError as error:
        log.warning("refresh of %s failed: %s", call.connection.id, error.error)
        call.answer = error
    return call


def defer(rt: Runtime, app: Celery, connection_ids: list[str], route: Route, wait: float) -> None:
    """Queue connections of one route again: waiting for a slot (`wait` of `SLOT_WAIT_SECONDS`
    or less), at the front of the host's line, which the next slots given back at that
    host take from; waiting for its breaker, in a message that goes when it is due to let
    a probe through."""
    if wait <= SLOT_WAIT_SECONDS:
        Line(rt.redis).join(route.host, connection_ids, route.breaker, front=True)
        return
    app.send_task(REFRESH_BATCH, args=[connection_ids], kwargs=route.kwargs(),
                  countdown=wait * random.uniform(1.0, 1.2), ignore_result=True)


def wake(rt: Runtime, app: Celery, host: str, slots: int | None = None) -> int:
    """Take as many connections from the head of `host`'s line as `slots` (the host's free
    slots, asked of Redis when not given), take their slots (the breaker permitting), and
    queue them in chunks that hold them; those that got none go back to the front.
    Answers how many were queued."""
    line, hosts = Line(rt.redis), gate(rt)
    if slots is None:
        slots = hosts.slots.free(host)
    if slots <= 0:
        return 0
    queued = 0
    with app.producer_or_acquire() as producer:
        for waiting in line.take(host, slots):
            ids = waiting.connection_ids
            leases, _ = hosts.admit(host, len(ids), waiting.breaker)
            line.join(host, ids[len(leases):], waiting.breaker, front=True)
            for start in range(0, len(leases), CHUNK):
                app.send_task(REFRESH_BATCH, args=[ids[start:start + CHUNK]],
                              kwargs={**Route(host, waiting.breaker).kwargs(), "leases": leases[start:start + CHUNK]},
                              producer=producer, ignore_result=True)
            queued += len(leases)
    return queued


def refresh_chunk(rt: Runtime, app: Celery, connection_ids: list[str],
                  admitted: Admitted | None = None) -> Counter[str]:
    """Refresh a chunk of connections that the sweep claimed, and settle each one's marker;
    answers how many ended each way. `admitted`: slots taken already for the chunk's route.
    Lock, read, call whatever the hosts admit, write, settle. Connections whose host had
    no free slot for them join the front of its line before the calls, holding no thread
    and no lock meanwhile (their markers kept); the slots go back as soon as the calls
    are over, and as many connections as are free then are taken from the line."""
    outcomes: Counter[str] = Counter()
    hosts = gate(rt)
    held = take_refresh_locks(rt.redis, connection_ids, rt.settings.refresh_lock_ttl)
    busy = [cid for cid in connection_ids if cid not in held]
    for connection_id in busy:
        # Someone else is refreshing it; the single path waits for that lock and re-checks.
        app.send_task(REFRESH_CONNECTION, args=[connection_id], countdown=random.uniform(0.5, 1.5),
                      ignore_result=True)
    outcomes["lock_busy"] += len(busy)
    rows = _read(rt, list(held)) if held else []
    due = [row for row in rows if needs_refresh(row.Connection, None, rt.settings.refresh_margin_seconds)]
    without_token = [row.Connection for row in due if not row.Connection.refresh_token_enc]
    by_route: dict[Route, list[Call]] = {}
    clients: dict[str, tuple[OAuthClient, Route]] = {}  # integration id → its client and route
    for row in due:
        if row.Connection.refresh_token_enc:
            if row.Integration.id not in clients:
                client = oauth_client(rt, row.Integration)
                clients[row.Integration.id] = (client, Route(host_of(client.token_url), uses_breaker(row.Integration)))
            call = Call(row.Connection, *clients[row.Integration.id])
            by_route.setdefault(call.route, []).append(call)
    going_by_route: dict[Route, tuple[list[Call], list[str]]] = {}  # its calls that go now, their leases
    deferred: dict[Route, list[str]] = {}  # connections left for later
    wait = 0.0
    if admitted is not None and admitted.route not in by_route:
        hosts.done(admitted.route.host, admitted.leases, 0, 0, breaker=False)  # nothing to call there after all
    for route, calls in by_route.items():
        if admitted is not None and route == admitted.route:
            leases, host_wait = admitted.leases[:len(calls)], SLOT_WAIT_SECONDS
            hosts.done(route.host, admitted.leases[len(calls):], 0, 0, breaker=False)  # slots not needed
        else:
            leases, host_wait = hosts.admit(route.host, len(calls), route.breaker)
        going_by_route[route] = (calls[:len(leases)], leases)
        if len(leases) < len(calls):
            deferred[route] = [call.connection.id for call in calls[len(leases):]]
            wait = max(wait, host_wait)
    if deferred:  # those left for later wait unlocked, at the front of their line
        waiting = {cid: held.pop(cid) for ids in deferred.values() for cid in ids}
        _settle(rt, app, waiting, {cid: Outcome("deferred", defer_in=wait) for cid in waiting})
        for route, ids in deferred.items():
            defer(rt, app, ids, route, wait)
        outcomes["deferred"] += len(waiting)
    going = [call for calls, _ in going_by_route.values() for call in calls]
    settled: dict[str, Outcome] = {cid: Outcome("not_needed") for cid in held}
    try:
        try:
            answered = list(_calls().map(lambda call: _post(rt, call), going))
        finally:
            # The calls are over: their slots go back before the write, and as many
            # connections are taken from the line, whose calls overlap this write.
            for route, (calls, leases) in going_by_route.items():
                failed = sum(1 for c in calls if isinstance(c.answer, ProviderError) and counts_against_host(c.answer))
                wake(rt, app, route.host, hosts.done(route.host, leases, len(calls) - failed, failed, route.breaker))
        _write(rt, answered, without_token, settled)
    finally:
        _settle(rt, app, held, settled)
    outcomes.update(outcome.name for outcome in settled.values())
    return outcomes


def _read(rt: Runtime, connection_ids: list[str]) -> list[Any]:
    """The locked connections with their integrations, in one SELECT."""
    with rt.db.session() as session:
        return list(session.execute(select(Connection, Integration).join(Integration)
                                    .where(Connection.id.in_(connection_ids))).all())


def _write(rt: Runtime, answered: list[Call], without_token: list[Connection], settled: dict[str, Outcome]) -> None:
    """Every answer of the chunk in one transaction: the refreshed rows in one fenced
    statement, the failures each fenced, and their events."""
    now = utcnow()
    refreshed = [call for call in answered if isinstance(call.answer, TokenSet)]
    with rt.db.session() as session:
        written = fenced_update_many(session, [
            (call.connection.id, call.connection.version, refreshed_values(rt, call.answer, now))
            for call in refreshed if isinstance(call.answer, TokenSet)])
        record_success_events(session, [call.connection for call in refreshed if call.connection.id in written])
        for call in refreshed:
            if call.connection.id in written:
                settled[call.connection.id] = Outcome("refreshed")
            else:
                log.warning("refresh of %s lost its lock: a newer write won, this answer is dropped",
                            call.connection.id)
                settled[call.connection.id] = Outcome("stale")
        for call in answered:
            if isinstance(call.answer, ProviderError):
                settled[call.connection.id] = write_failure(session, rt.cipher, call.connection, call.answer, 0)
        for connection in without_token:
            settled[connection.id] = write_failure(session, rt.cipher, connection, NO_REFRESH_TOKEN, 0)


def _settle(rt: Runtime, app: Celery, held: dict[str, str], settled: dict[str, Outcome]) -> None:
    """Release the locks, then settle each marker as `refresh_connection` does: cleared when
    done, kept while a retry (now the single path's, with its first retry spent) or the
    chunk's deferred remainder is queued."""
    for connection_id in release_refresh_locks(rt.redis, held):
        log.warning("refresh:%s expired before its holder released it", connection_id)
    retries = {cid: outcome.retry_in for cid, outcome in settled.items() if outcome.retry_in is not None}
    deferred = [cid for cid, outcome in settled.items() if outcome.defer_in is not None]
    kept = {cid: float(refreshes.QUEUED_TTL_SECONDS) for cid in [*retries, *deferred]}
    kept.update({cid: outcome.hold_for for cid, outcome in settled.items() if outcome.hold_for})
    refreshes.settle(rt.redis, [cid for cid in settled if cid not in kept], kept)
    with app.producer_or_acquire() as producer:
        for connection_id, countdown in retries.items():
            app.send_task(REFRESH_CONNECTION, args=[connection_id], countdown=countdown, retries=1,
                          producer=producer, ignore_result=True)


def _by_route(rt: Runtime, connection_ids: list[str], integrations: list[str] | None) -> dict[Route | None, list[str]]:
    """The connections grouped by the route their refresh calls take, from each one's
    integration (one SELECT of the page's few integrations); None where it is not known."""
    integration_of = dict(zip(connection_ids, integrations or [], strict=bool(integrations)))
    with rt.db.session() as session:
        routes = {integration.id: Route(host_of(server_urls(rt.settings, integration)[0]), uses_breaker(integration))
                  for integration in session.scalars(select(Integration).where(
                      Integration.id.in_(set(integration_of.values()))))}
    grouped: dict[Route | None, list[str]] = {}
    for connection_id in connection_ids:
        grouped.setdefault(routes.get(integration_of.get(connection_id, "")), []).append(connection_id)
    return grouped


def _cut(rt: Runtime, app: Celery, grouped: dict[Route | None, list[str]]) -> int:
    """Queue a page: the connections of each known route join the end of its host's line,
    and as many as the host has free slots for are taken from its head at once, in chunks
    that name their route; connections of no known route go in chunks as they come.
    Answers how many connections were queued now."""
    queued = 0
    with app.producer_or_acquire() as producer:
        for route, ids in grouped.items():
            if route is None:
                for start in range(0, len(ids), CHUNK):
                    app.send_task(REFRESH_BATCH, args=[ids[start:start + CHUNK]], producer=producer,
                                  ignore_result=True)
                queued += len(ids)
    for route, ids in grouped.items():
        if route is not None:
            Line(rt.redis).join(route.host, ids, route.breaker)
            queued += wake(rt, app, route.host)
    return queued


@celery.task(name=REFRESH_BATCH, bind=True)
def refresh_batch(self: KeeperTask, connection_ids: list[str], host: str | None = None, breaker: bool = True,
                  leases: list[str] | None = None, integrations: list[str] | None = None) -> dict[str, int]:
    """Refresh the connections of a sweep page (with each one's integration), which first
    joins the lines of its hosts; or a chunk. Running twice is harmless: each connection is
    re-checked under its lock. A chunk taken from its host's line holds that host's
    `leases` (renewed first: one round trip); one that names its `host` only takes them.
    Either way, before any lock or read; without any, it goes back to the front of the line."""
    rt = self.rt
    if len(connection_ids) > CHUNK:
        return {"queued_now": _cut(rt, self.app, _by_route(rt, connection_ids, integrations))}
    if host is None:
        return dict(refresh_chunk(rt, self.app, connection_ids))
    route = Route(host, breaker)
    hosts = gate(rt)
    if leases is not None:
        leases, wait = hosts.slots.renew(host, leases), SLOT_WAIT_SECONDS
    else:
        leases, wait = hosts.admit(host, len(connection_ids), breaker)
    if not leases:
        defer(rt, self.app, connection_ids, route, wait)
        return {"deferred": len(connection_ids)}
    try:
        return dict(refresh_chunk(rt, self.app, connection_ids, Admitted(route, leases)))
    except BaseException:
        hosts.slots.release(host, leases)  # whichever the chunk had not given back yet
        raise
