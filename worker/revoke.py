"""`revoke_connection`: tell the provider (RFC 7009) that a disconnected connection's
tokens are no longer wanted, then erase them, whatever the provider said."""
from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from sqlalchemy import or_, select

from shared import refreshes
from shared.integrations import oauth_client, server_urls
from shared.models import Connection, Integration, utcnow
from shared.providers import ProviderError
from shared.providers import revoke as post_revoke
from shared.queue import REVOKE_CONNECTION, REVOKE_LEFTOVERS
from shared.revocations import erase_tokens
from shared.runtime import Runtime
from shared.tokens import is_transient
from worker.app import celery
from worker.task import KeeperTask

log = logging.getLogger(__name__)

# Tries in all (the first and its retries); then the tokens are erased unrevoked.
MAX_TRIES = 5
# A revoked connection still holding tokens this long after its revocation lost its
# task (the broker was down at the DELETE, or the message was lost): queue it again.
LEFTOVER_AFTER = timedelta(minutes=10)
LEFTOVER_BATCH = 500


def backoff(retries: int) -> float:
    """About 1 s, 2 s, 4 s, 8 s, with jitter: all tries are over within about half a minute."""
    return 2.0**retries * random.uniform(0.5, 1.0)


def revoke_at_provider(rt: Runtime, connection: Connection, integration: Integration) -> bool:
    """Post the refresh token, then the access token, to the revocation endpoint; True
    when one of them failed transiently (worth another try)."""
    _, revoke_url = server_urls(rt.settings, integration)
    if not revoke_url:
        return False
    client = oauth_client(rt, integration)
    transient = False
    stored = ((connection.refresh_token_enc, "refresh_token"), (connection.access_token_enc, "access_token"))
    for column, hint in stored:
        if column is None:
            continue
        try:
            token = rt.cipher.decrypt(column)
        except ValueError:
            log.warning("%s's %s is under no known key: it is erased without revocation", connection.id, hint)
            continue
        try:
            post_revoke(client, revoke_url, token=token, token_type_hint=hint,
                        timeout=rt.settings.http_timeout_seconds)
        except ProviderError as error:
            log.warning("revocation of %s's %s failed: %s", connection.id, hint, error.error)
            transient = transient or is_transient(error)
    return transient


@celery.task(name=REVOKE_CONNECTION, bind=True, max_retries=MAX_TRIES - 1)
def revoke_connection(self: KeeperTask, connection_id: str) -> str:
    """Revoke at the provider, retrying transient failures a bounded number of times, then
    erase the stored tokens. Safe to run twice: a second run finds nothing to erase."""
    rt = self.rt
    with rt.db.session() as session:
        row = session.execute(select(Connection, Integration).join(Integration)
                              .where(Connection.id == connection_id)).first()
    if row is None or row.Connection.status != "revoked":
        return "not_revoked"
    connection, integration = row.Connection, row.Integration
    if connection.access_token_enc is None and connection.refresh_token_enc is None:
        return "already_erased"
    if revoke_at_provider(rt, connection, integration) and self.request.retries < self.max_retries:
        raise self.retry(countdown=backoff(self.request.retries))
    with rt.db.session() as session:
        erased = erase_tokens(session, connection_id)
    if erased:
        refreshes.announce(rt.redis, connection_id)
    log.info("connection %s revoked, its tokens erased", connection_id)
    return "erased"


def requeue_leftovers(rt: Runtime, now: datetime | None = None) -> int:
    """Queue the revocation again for revoked connections that still hold tokens long
    after they were revoked; return how many were queued."""
    before = (now or utcnow()) - LEFTOVER_AFTER
    with rt.db.session() as session:
        ids = session.scalars(
            select(Connection.id).where(Connection.status == "revoked", Connection.updated_at < before,
                                        or_(Connection.access_token_enc.is_not(None),
                                            Connection.refresh_token_enc.is_not(None)))
            .limit(LEFTOVER_BATCH)).all()
    for connection_id in ids:
        rt.celery.send_task(REVOKE_CONNECTION, args=[connection_id], ignore_result=True)
    return len(ids)


@celery.task(name=REVOKE_LEFTOVERS, bind=True)
def revoke_leftovers(self: KeeperTask) -> int:
    """Beat's periodic look for revocations that never ran."""
    queued = requeue_leftovers(self.rt)
    if queued:
        log.warning("queued %d revocations again that had not run", queued)
    return queued
