"""`exchange_code`: trade an attempt's authorization code for tokens.

A code is single-use, so it is posted again only after a transient failure (a 5xx,
a timeout, a refused connection), a few times within EXCHANGE_WINDOW_SECONDS, and
never after a definitive answer. The code is taken from Redis atomically before each
post and put back only after a transient failure, so a task redelivered after a
crash in the middle of a post finds nothing and never posts a code twice unknowingly."""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared import refreshes
from shared.attempts import claim_link, finish_attempt
from shared.integrations import oauth_client
from shared.metrics import EXCHANGES, error_class
from shared.models import ConnectAttempt, Connection, ConnectSession, Integration
from shared.providers import ProviderError, TokenSet
from shared.providers import exchange_code as post_code
from shared.queue import EXCHANGE_CODE
from shared.runtime import Runtime
from shared.tokens import fenced_update, is_transient, record_event, token_values
from worker.app import celery
from worker.task import KeeperTask

log = logging.getLogger(__name__)
REAUTH_WRITE_ATTEMPTS = 5
# Codes live about a minute at most providers; the end user waits on the status page.
EXCHANGE_WINDOW_SECONDS = 15.0
MAX_TRIES = 4


class ConnectionRevoked(Exception):
    """The connection a re-authorization names was disconnected meanwhile."""


def backoff(retries: int) -> float:
    """About 0.5 s, 1 s, 2 s … with jitter: short, the code and the end user are waiting."""
    return 0.5 * 2.0**retries * random.uniform(0.8, 1.2)

# The attempt failed because another attempt through the same link connected first.
LINK_USED = "link_already_used"


@dataclass(frozen=True)
class Exchanged:
    """How one run of the exchange ended: `outcome` (connected, retrying, failed,
    interrupted, link_used, revoked, already_ended), the error class of a retrying or
    failed run, and when to try again (retrying only)."""

    outcome: str
    error: str = ""
    retry_in: float | None = None


def _store(rt: Runtime, session: Session, connect_session: ConnectSession, tokens: TokenSet) -> str:
    """Create the connection, or re-authorize the one the session names; return its id."""
    values = token_values(tokens, rt.cipher)
    if connect_session.connection_id:
        # The new grant wins over anything written meanwhile; the version bump also
        # makes a refresh of the old grant that lands later drop its answer.
        for _ in range(REAUTH_WRITE_ATTEMPTS):
            connection = session.get(Connection, connect_session.connection_id, with_for_update=True,
                                     populate_existing=True)
            assert connection is not None
            if connection.status == "revoked":
                raise ConnectionRevoked(connection.id)  # a disconnect is final
            if fenced_update(session, connection.id, connection.version, values):
                record_event(session, connection, "reauthorized")
                return connection.id
        raise RuntimeError(f"connection {connect_session.connection_id} kept changing during re-authorization")
    values.setdefault("scopes", [])
    connection = Connection(tenant_id=connect_session.tenant_id, integration_id=connect_session.integration_id,
                            end_user_id=connect_session.end_user_id, **values)
    if not tokens.scopes:
        integration = session.get(Integration, connect_session.integration_id)
        assert integration is not None
        connection.scopes = integration.scopes
    session.add(connection)
    session.flush()
    record_event(session, connection, "created")
    return connection.id


@celery.task(name=EXCHANGE_CODE, bind=True, max_retries=MAX_TRIES - 1)
def exchange_code(self: KeeperTask, attempt_id: str, retry_until: float | None = None) -> str:
    """Post the code to the token endpoint; again only after a transient failure, within
    the window that `retry_until` (a Unix time set by the first try) closes. Each run is
    counted by how it ended; the outcome is returned."""
    rt = self.rt
    retry_until = retry_until or time.time() + EXCHANGE_WINDOW_SECONDS
    try:
        done = _exchange(rt, attempt_id, self.request.retries, retry_until)
    except Exception:
        EXCHANGES.labels("failed", "server_error").inc()
        # Never leave the browser polling a pending attempt forever.
        with rt.db.session() as session:
            finish_attempt(session, attempt_id, "failed", error="server_error")
        raise
    EXCHANGES.labels(done.outcome, done.error).inc()
    if done.retry_in is not None:
        raise self.retry(countdown=done.retry_in, kwargs={"retry_until": retry_until})
    return done.outcome


def _fail(rt: Runtime, attempt_id: str, error: str) -> None:
    with rt.db.session() as session:
        finish_attempt(session, attempt_id, "failed", error=error)


def _exchange(rt: Runtime, attempt_id: str, retries: int = 0, retry_until: float | None = None) -> Exchanged:
    """Take the code, post it, store the outcome; return how the run ended (and when to
    try again). Without `retry_until` there is no window: a single try."""
    with rt.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        if attempt is None or attempt.status != "pending":
            return Exchanged("already_ended")
        connect_session = session.get(ConnectSession, attempt.session_id)
        assert connect_session is not None  # rows are never deleted under a pending attempt
        integration = session.get(Integration, connect_session.integration_id)
        assert integration is not None
        if connect_session.used_at is not None:  # another attempt through the link won already
            finish_attempt(session, attempt_id, "failed", error=LINK_USED)
            rt.codes.take(attempt_id)
            return Exchanged("link_used")
        client = oauth_client(rt, integration)
        use_pkce = integration.pkce
        revoked = bool(connect_session.connection_id) and session.get(
            Connection, connect_session.connection_id).status == "revoked"  # type: ignore[union-attr]
    if revoked:
        rt.codes.take(attempt_id)  # a disconnect is final: the code is never posted
        _fail(rt, attempt_id, "connection_revoked")
        return Exchanged("revoked")
    taken = rt.codes.take(attempt_id)
    if taken is None:
        _fail(rt, attempt_id, "exchange_interrupted")
        return Exchanged("interrupted")
    code, verifier = taken
    try:
        tokens = post_code(client, code=code, redirect_uri=rt.settings.redirect_uri,
                           code_verifier=verifier if use_pkce else None, timeout=rt.settings.http_timeout_seconds)
    except ProviderError as error:
        wait, failure = backoff(retries), error_class(error.error, error.status)
        if is_transient(error) and retries < MAX_TRIES - 1 and time.time() + wait < (retry_until or 0):
            # A transient failure did not spend the code: it goes back for the next try.
            rt.codes.put(attempt_id, code, verifier)
            log.warning("exchange for attempt %s failed (%s); trying again in %.1fs", attempt_id, error.error, wait)
            return Exchanged("retrying", failure, wait)
        log.warning("exchange for attempt %s failed: %s", attempt_id, error.error)
        _fail(rt, attempt_id, error.error or "exchange_failed")
        return Exchanged("failed", failure)
    try:
        with rt.db.session() as session:
            if not claim_link(session, connect_session.id):
                # Another browser's attempt through the same link succeeded first: this
                # grant is dropped, never stored, so the link makes one connection.
                log.warning("attempt %s lost its connect link to another attempt", attempt_id)
                finish_attempt(session, attempt_id, "failed", error=LINK_USED)
                return Exchanged("link_used")
            connection_id = _store(rt, session, connect_session, tokens)
            finish_attempt(session, attempt_id, "succeeded", connection_id=connection_id)
    except ConnectionRevoked:
        _fail(rt, attempt_id, "connection_revoked")
        return Exchanged("revoked")
    refreshes.announce(rt.redis, connection_id)  # a re-authorized connection is cached by the web
    log.info("attempt %s connected %s", attempt_id, connection_id)
    return Exchanged("connected")
