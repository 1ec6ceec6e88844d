"""`refresh_connection`: one connection's refresh (asked for on demand, or a retry),
and the rules both it and the batch (worker/batch.py) follow: what a failure writes and
what comes after it.

A refresh runs under the connection's Redis lock, re-reads the connection, calls the
token endpoint, and writes the answer with a fenced update, with nothing between
the provider's answer and the commit."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import LockNotOwnedError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import refreshes
from shared.config import Settings
from shared.crypto import Cipher
from shared.fairness import Gate, counts_against_host, host_of
from shared.integrations import oauth_client
from shared.locks import RefreshLock
from shared.models import Connection, Integration, utcnow
from shared.providers import ProviderError, TokenSet
from shared.providers import refresh as post_refresh
from shared.queue import REFRESH_CONNECTION
from shared.runtime import Runtime
from shared.tokens import Failure, classify, fenced_update, needs_refresh, record_event, record_events, token_values
from worker.app import celery
from worker.task import KeeperTask

log = logging.getLogger(__name__)

MAX_RETRIES = 6
MAX_COUNTDOWN_SECONDS = 60  # longer waits are left to the next sweep
NO_REFRESH_TOKEN = ProviderError("no refresh token was issued", error="invalid_grant")


@dataclass(frozen=True)
class Outcome:
    """What one refresh run did, and when to try again (None: never)."""

    name: str
    retry_in: float | None = None
    hold_for: float | None = None  # keep anyone from queueing it again this long
    defer_in: float | None = None  # not attempted (the host is busy or failing): ask again then


def backoff(retries: int) -> float:
    """Exponential backoff with jitter: about 1 s, 2 s, 4 s … capped."""
    return min(2.0**retries, 30.0) * random.uniform(0.5, 1.0)


def gate(rt: Runtime) -> Gate:
    """The per-host slots and breaker of the runtime's Redis."""
    settings = rt.settings
    return Gate(rt.redis, settings.provider_concurrency, settings.provider_breaker_seconds, settings.refresh_lock_ttl)


def uses_breaker(integration: Integration) -> bool:
    """Whether the host's breaker guards calls of this integration: all but the sandbox's,
    whose failures are injected per client on a host that all its users share."""
    return integration.provider != "sandbox"


def write_failure(session: Session, cipher: Cipher, connection: Connection, error: ProviderError,
                  retries: int) -> Outcome:
    """Record a failed refresh (fenced, with its event) and say what follows."""
    failure = classify(error)
    message = str(error)[:300]
    if failure is Failure.REAUTH:
        values = {"status": "needs_reauth", "last_error": message, "updated_at": utcnow()}
        if fenced_update(session, connection.id, connection.version, values):
            record_event(session, connection, "needs_reauth", message)
        return Outcome("needs_reauth")
    values = {"refresh_failures": connection.refresh_failures + 1, "last_error": message, "updated_at": utcnow()}
    if error.refresh_token:  # the provider rotated even though the rest of its answer was unusable
        values["refresh_token_enc"] = cipher.encrypt(error.refresh_token)
    if not fenced_update(session, connection.id, connection.version, values):
        return Outcome("stale")
    if connection.refresh_failures == 0:
        record_event(session, connection, "refresh_failed", message)
    if failure is Failure.RATE_LIMITED:
        wait = error.retry_after if error.retry_after is not None else backoff(retries)
        if wait > MAX_COUNTDOWN_SECONDS:
            return Outcome("rate_limited", hold_for=wait)  # no retry; nobody asks again before then
        return Outcome("rate_limited", wait)
    return Outcome("failed", backoff(retries))


def refreshed_values(rt: Runtime, tokens: TokenSet, now: datetime) -> dict[str, Any]:
    """The columns a successful refresh writes."""
    return {**token_values(tokens, rt.cipher, now), "last_refreshed_at": now}


def record_success_events(session: Session, connections: list[Connection]) -> None:
    """The history of refreshes that landed, in one INSERT: `refreshed`, and `recovered`
    (with its webhook) after failures."""
    entries: list[tuple[Connection, str, str | None]] = []
    for connection in connections:
        entries.append((connection, "refreshed", None))
        if connection.refresh_failures:
            entries.append((connection, "recovered", None))
    record_events(session, entries)


def refresh_once(rt: Runtime, connection_id: str, seen: str | None, retries: int = 0) -> Outcome:
    """One refresh, to be called under the connection's lock."""
    settings: Settings = rt.settings
    with rt.db.session() as session:
        row = session.execute(select(Connection, Integration).join(Integration)
                              .where(Connection.id == connection_id)).first()
    if row is None or not needs_refresh(row.Connection, seen, settings.refresh_margin_seconds):
        return Outcome("not_needed")
    connection, client = row.Connection, oauth_client(rt, row.Integration)
    if not connection.refresh_token_enc:
        with rt.db.session() as session:
            return write_failure(session, rt.cipher, connection, NO_REFRESH_TOKEN, retries)
    host, hosts = host_of(client.token_url), gate(rt)
    breaker = uses_breaker(row.Integration)
    leases, wait = hosts.admit(host, 1, breaker)
    if not leases:
        return Outcome("deferred", defer_in=wait)
    alive = failed = 0
    try:
        refresh_token = rt.cipher.decrypt(connection.refresh_token_enc)
        try:
            tokens = post_refresh(client, refresh_token=refresh_token, timeout=settings.http_timeout_seconds)
        except ProviderError as error:
            failed, alive = (1, 0) if counts_against_host(error) else (0, 1)
            log.warning("refresh of %s failed: %s", connection_id, error.error)
            with rt.db.session() as session:
                return write_failure(session, rt.cipher, connection, error, retries)
        alive = 1
        now = utcnow()
        with rt.db.session() as session:
            if not fenced_update(session, connection_id, connection.version, refreshed_values(rt, tokens, now)):
                log.warning("refresh of %s lost its lock: a newer write won, this answer is dropped", connection_id)
                return Outcome("stale")
            record_success_events(session, [connection])
        return Outcome("refreshed")
    finally:
        hosts.done(host, leases, alive, failed, breaker)


@celery.task(name=REFRESH_CONNECTION, bind=True, max_retries=MAX_RETRIES)
def refresh_connection(self: KeeperTask, connection_id: str, seen: str | None = None) -> str:
    """Refresh one connection if it still needs it; safe to run twice (lock, re-read, fence)."""
    rt = self.rt
    lock = RefreshLock(rt.redis, connection_id, rt.settings.refresh_lock_ttl)
    if not lock.acquire():
        # Another worker is refreshing it: look again when its lock is gone, by
        # which time the connection is usually fresh and nothing is sent.
        if self.request.retries >= self.max_retries:
            refreshes.finish(rt.redis, connection_id)
            return "lock_busy"
        refreshes.keep_queued(rt.redis, connection_id)
        raise self.retry(countdown=lock.remaining_seconds() + random.uniform(0.05, 0.25))
    outcome = Outcome("error")
    retrying = False
    try:
        outcome = refresh_once(rt, connection_id, seen, self.request.retries)
    finally:
        _release(lock)
        # Whatever happened, the marker and the waiters are settled here.
        retrying = outcome.retry_in is not None and self.request.retries < self.max_retries
        if retrying or outcome.defer_in is not None:
            refreshes.keep_queued(rt.redis, connection_id)
        elif outcome.hold_for:
            refreshes.keep_queued(rt.redis, connection_id, outcome.hold_for)
        else:
            refreshes.finish(rt.redis, connection_id)
    if outcome.defer_in is not None:
        self.defer(outcome.defer_in)  # its turn comes later; no retry is spent waiting for it
    elif retrying:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.name


def _release(lock: RefreshLock) -> None:
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning("%s expired before its holder released it", lock.name)
