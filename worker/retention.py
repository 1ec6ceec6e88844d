"""The retention beat task: history older than RETENTION_DAYS (events, ended webhook
deliveries, connect sessions and attempts) is pruned in small batches, each committed
on its own, so no table grows forever under constant refreshing and no prune holds
locks for long."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, delete, exists, select

from shared.db import rowcount
from shared.models import ConnectAttempt, ConnectSession, Event, WebhookDelivery, utcnow
from shared.queue import PRUNE_HISTORY
from shared.runtime import Runtime
from worker.app import celery
from worker.task import KeeperTask

log = logging.getLogger(__name__)

PRUNE_BATCH = 500

_events: Table = Event.__table__
_attempts: Table = ConnectAttempt.__table__
_sessions: Table = ConnectSession.__table__
_deliveries: Table = WebhookDelivery.__table__


@dataclass(frozen=True)
class Prunable:
    """A table and which of its rows are old enough to go, given the cutoff."""

    table: Table
    old: Callable[[datetime], ColumnElement[bool]]


# In the order they are pruned: a row goes before the rows it references.
PRUNABLES = (
    # A delivery has ended once it has no next attempt (delivered, or given up).
    Prunable(_deliveries, lambda cutoff: and_(_deliveries.c.created_at < cutoff,
                                              _deliveries.c.next_attempt_at.is_(None))),
    # An event whose delivery is still being tried stays until that delivery ends.
    Prunable(_events, lambda cutoff: and_(_events.c.created_at < cutoff,
                                          ~exists().where(_deliveries.c.event_id == _events.c.id))),
    Prunable(_attempts, lambda cutoff: _attempts.c.created_at < cutoff),
    # A session ended long ago; it goes once no attempt refers to it any more.
    Prunable(_sessions, lambda cutoff: and_(_sessions.c.expires_at < cutoff,
                                            ~exists().where(_attempts.c.session_id == _sessions.c.id))),
)


def prune(rt: Runtime, now: datetime | None = None, batch: int = PRUNE_BATCH) -> dict[str, int]:
    """Delete every row older than the retention period; return how many went, by table."""
    cutoff = (now or utcnow()) - timedelta(days=rt.settings.retention_days)
    counts: dict[str, int] = {}
    for prunable in PRUNABLES:
        table, total = prunable.table, 0
        while True:
            oldest = select(table.c.id).where(prunable.old(cutoff)).limit(batch)
            with rt.db.session() as session:
                deleted = rowcount(session.execute(delete(table).where(table.c.id.in_(oldest))))
            total += deleted
            if deleted < batch:
                break
        counts[table.name] = total
    return counts


@celery.task(name=PRUNE_HISTORY, bind=True)
def prune_history(self: KeeperTask) -> dict[str, int]:
    """Beat's periodic pruning."""
    counts = prune(self.rt)
    log.info("pruned history older than %d days: %s", self.rt.settings.retention_days, counts)
    return counts
