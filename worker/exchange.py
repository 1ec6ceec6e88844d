"""`exchange_code`: trade an attempt's authorization code for tokens, once."""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from shared import refreshes
from shared.attempts import finish_attempt
from shared.integrations import oauth_client
from shared.models import ConnectAttempt, Connection, ConnectSession, Integration
from shared.providers import ProviderError, TokenSet
from shared.providers import exchange_code as post_code
from shared.queue import EXCHANGE_CODE
from shared.runtime import Runtime
from shared.tokens import fenced_update, record_event, token_values
from worker.app import celery, runtime

log = logging.getLogger(__name__)
REAUTH_WRITE_ATTEMPTS = 5


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


@celery.task(name=EXCHANGE_CODE, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def exchange_code(attempt_id: str) -> None:
    """Post the code to the token endpoint once, never again after the provider answered.

    The code is taken from Redis atomically before the call, so a redelivered task
    finds nothing to post and fails the attempt instead of spending the code twice."""
    rt = runtime()
    try:
        _exchange(rt, attempt_id)
    except Exception:
        # Never leave the browser polling a pending attempt forever.
        with rt.db.session() as session:
            finish_attempt(session, attempt_id, "failed", error="server_error")
        raise


def _exchange(rt: Runtime, attempt_id: str) -> None:
    """Take the code, post it once, store the outcome."""
    with rt.db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        if attempt is None or attempt.status != "pending":
            return
        connect_session = session.get(ConnectSession, attempt.session_id)
        assert connect_session is not None  # rows are never deleted under an attempt
        integration = session.get(Integration, connect_session.integration_id)
        assert integration is not None
        client = oauth_client(rt, integration)
        use_pkce = integration.pkce
    taken = rt.codes.take(attempt_id)
    if taken is None:
        with rt.db.session() as session:
            finish_attempt(session, attempt_id, "failed", error="exchange_interrupted")
        return
    code, verifier = taken
    try:
        tokens = post_code(client, code=code, redirect_uri=rt.settings.redirect_uri,
                           code_verifier=verifier if use_pkce else None, timeout=rt.settings.http_timeout_seconds)
    except ProviderError as error:
        log.warning("exchange for attempt %s failed: %s", attempt_id, error.error)
        with rt.db.session() as session:
            finish_attempt(session, attempt_id, "failed", error=error.error or "exchange_failed")
        return
    with rt.db.session() as session:
        connection_id = _store(rt, session, connect_session, tokens)
        finish_attempt(session, attempt_id, "succeeded", connection_id=connection_id)
    refreshes.announce(rt.redis, connection_id)  # a re-authorized connection is cached by the web
    log.info("attempt %s connected %s", attempt_id, connection_id)
