"""`refresh_connection`: one connection's refresh.

A refresh runs under the connection's Redis lock, re-reads the connection, calls the
token endpoint, and writes the answer with a fenced update, with nothing between
the provider's answer and the commit."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from celery import Task
from redis.exceptions import LockNotOwnedError
from sqlalchemy import select

from shared import refreshes
from shared.integrations import oauth_client
from shared.locks import RefreshLock
from shared.models import Connection, Integration, utcnow
from shared.providers import ProviderError
from shared.providers import refresh as post_refresh
from shared.queue import REFRESH_CONNECTION
from shared.runtime import Runtime
from shared.tokens import Failure, classify, fenced_update, needs_refresh, record_event, token_values
from worker.app import celery, runtime

log = logging.getLogger(__name__)

MAX_RETRIES = 6
MAX_COUNTDOWN_SECONDS = 60  # longer waits are left to the next sweep


@dataclass(frozen=True)
class Outcome:
    """What one refresh run did, and when to try again (None: never)."""

    name: str
    retry_in: float | None = None
    hold_for: float | None = None  # keep anyone from queueing it again this long


def backoff(retries: int) -> float:
    """Exponential backoff with jitter: about 1 s, 2 s, 4 s … capped."""
    return min(2.0**retries, 30.0) * random.uniform(0.5, 1.0)


def _record_failure(rt: Runtime, connection: Connection, error: ProviderError, retries: int) -> Outcome:
    failure = classify(error)
    message = str(error)[:300]
    with rt.db.session() as session:
        if failure is Failure.REAUTH:
            values = {"status": "needs_reauth", "last_error": message, "updated_at": utcnow()}
            if fenced_update(session, connection.id, connection.version, values):
                record_event(session, connection, "needs_reauth", message)
            return Outcome("needs_reauth")
        values = {"refresh_failures": connection.refresh_failures + 1, "last_error": message, "updated_at": utcnow()}
        if error.refresh_token:  # the provider rotated even though the rest of its answer was unusable
            values["refresh_token_enc"] = rt.cipher.encrypt(error.refresh_token)
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


def refresh_once(rt: Runtime, connection_id: str, seen: str | None, retries: int = 0) -> Outcome:
    """One refresh, to be called under the connection's lock."""
    settings = rt.settings
    with rt.db.session() as session:
        row = session.execute(select(Connection, Integration).join(Integration)
                              .where(Connection.id == connection_id)).first()
    if row is None or not needs_refresh(row.Connection, seen, settings.refresh_margin_seconds):
        return Outcome("not_needed")
    connection, client = row.Connection, oauth_client(rt, row.Integration)
    if not connection.refresh_token_enc:
        error = ProviderError("no refresh token was issued", error="invalid_grant")
        return _record_failure(rt, connection, error, retries)
    refresh_token = rt.cipher.decrypt(connection.refresh_token_enc)
    try:
        tokens = post_refresh(client, refresh_token=refresh_token, timeout=settings.http_timeout_seconds)
    except ProviderError as error:
        log.warning("refresh of %s failed: %s", connection_id, error.error)
        return _record_failure(rt, connection, error, retries)
    now = utcnow()
    with rt.db.session() as session:
        if not fenced_update(session, connection_id, connection.version,
                             {**token_values(tokens, rt.cipher, now), "last_refreshed_at": now}):
            log.warning("refresh of %s lost its lock: a newer write won, this answer is dropped", connection_id)
            return Outcome("stale")
        record_event(session, connection, "refreshed")
        if connection.refresh_failures:
            record_event(session, connection, "recovered")
    return Outcome("refreshed")


@celery.task(name=REFRESH_CONNECTION, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=MAX_RETRIES, ignore_result=True)
def refresh_connection(self: Task, connection_id: str, seen: str | None = None) -> str:
    """Refresh one connection if it still needs it; safe to run twice (lock, re-read, fence)."""
    rt = runtime()
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
        if retrying:
            refreshes.keep_queued(rt.redis, connection_id)
        elif outcome.hold_for:
            refreshes.keep_queued(rt.redis, connection_id, outcome.hold_for)
        else:
            refreshes.finish(rt.redis, connection_id)
    if retrying:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.name


def _release(lock: RefreshLock) -> None:
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning("%s expired before its holder released it", lock.name)
