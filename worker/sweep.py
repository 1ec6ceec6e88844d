"""The beat-driven sweep: find due connections and queue each one once."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import select, tuple_

from shared import refreshes
from shared.fairness import LINE_STALLED_SECONDS, Line
from shared.models import Connection, utcnow
from shared.queue import REFRESH_BATCH, SWEEP_DUE
from shared.runtime import Runtime
from shared.tokens import due_at
from worker.app import celery
from worker.batch import wake
from worker.task import KeeperTask

log = logging.getLogger(__name__)

SWEEP_BATCH = 1000


def sweep(rt: Runtime, app: Celery, batch: int = SWEEP_BATCH) -> int:
    """Queue every due active connection once; return how many were queued.

    Reads through the (status, expires_at) index in keyset batches, so the cost
    follows the number of due connections, not the size of the table."""
    now = utcnow()
    margin = rt.settings.refresh_margin_seconds
    horizon = now + timedelta(seconds=margin)  # no token expiring later than this is due
    query = (select(Connection.id, Connection.integration_id, Connection.expires_at, Connection.lifetime_seconds)
             .where(Connection.status == "active", Connection.expires_at <= horizon)
             .order_by(Connection.expires_at, Connection.id).limit(batch))
    queued, after = 0, None
    with app.producer_or_acquire() as producer:
        while True:
            page = query.where(tuple_(Connection.expires_at, Connection.id) > after) if after else query
            with rt.db.session() as session:
                rows = session.execute(page).all()
            due = {row.id: row.integration_id for row in rows
                   if (due_at(row.expires_at, row.lifetime_seconds, margin) or now) <= now}
            claimed = refreshes.claim(rt.redis, due)
            if claimed:
                # One message per page, with each connection's integration; a worker cuts it
                # into chunks of one provider host each, refreshed together (worker/batch.py).
                app.send_task(REFRESH_BATCH, args=[claimed], kwargs={"integrations": [due[cid] for cid in claimed]},
                              producer=producer, ignore_result=True)
                queued += len(claimed)
            if len(rows) < batch:
                break
            after = (rows[-1].expires_at, rows[-1].id)
    return queued


def move_stalled_lines(rt: Runtime, app: Celery, stalled_seconds: float = LINE_STALLED_SECONDS) -> int:
    """Take from every host's line that nothing has taken from for `stalled_seconds` (the
    calls that held its slots ended without giving them back: a worker died), as many
    connections as the host has free slots for; answers how many were queued."""
    moved = 0
    for host in Line(rt.redis, stalled_seconds).stalled():
        taken = wake(rt, app, host)
        if taken:
            log.warning("the line of %s had not moved; %d connections taken from it", host, taken)
        moved += taken
    return moved


@celery.task(name=SWEEP_DUE, bind=True)
def sweep_due(self: KeeperTask) -> int:
    """Beat's periodic sweep, which also moves stalled lines; a redelivered one is harmless
    (the markers hold)."""
    queued = sweep(self.rt, self.app)
    move_stalled_lines(self.rt, self.app)
    log.info("sweep queued %d due connections", queued)
    return queued
