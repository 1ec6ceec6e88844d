"""The retention task against real databases (SQLite, and PostgreSQL when DATABASE_URL
names one), migrated by Alembic: old rows are pruned in batches, recent ones stay."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta

import fakeredis
import pytest
from sqlalchemy import select

from shared import migrate
from shared.crypto import Cipher
from shared.db import Database
from shared.models import (
    ConnectAttempt,
    Connection,
    ConnectSession,
    Event,
    WebhookDelivery,
    new_id,
    utcnow,
)
from shared.runtime import Runtime
from tests.conftest import make_settings, seed_integration
from worker.retention import prune

pytestmark = pytest.mark.integration

KINDS = ["sqlite"] + (["postgresql"] if os.environ.get("DATABASE_URL", "").startswith("postgresql") else [])


@pytest.fixture(params=KINDS)
def rt(request: pytest.FixtureRequest, new_database: Callable[[], str],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    url = new_database() if request.param == "postgresql" else f"sqlite:///{tmp_path_factory.mktemp('db')}/r.db"
    migrate.upgrade(url)
    settings = make_settings(database_url=url, retention_days=30)
    runtime = Runtime(settings=settings, db=Database(url), redis=fakeredis.FakeRedis(),
                      cipher=Cipher(settings.encryption_keys))
    yield runtime
    runtime.db.dispose()


def _ids(rt: Runtime, model: type) -> set[str]:
    with rt.db.session() as session:
        return set(session.scalars(select(model.id)))


def test_old_history_is_pruned_in_batches_and_recent_history_stays(rt: Runtime) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    with rt.db.session() as session:
        tenant, integration = seed_integration(session)
        connection = Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                                created_at=old)
        session.add(connection)
        session.flush()

        def connect_session(expires_at: object) -> ConnectSession:
            row = ConnectSession(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u",
                                 connection_id=connection.id, token_hash=new_id("h"), expires_at=expires_at,
                                 created_at=expires_at)
            session.add(row)
            session.flush()
            return row

        ended_long_ago = [connect_session(old) for _ in range(5)]
        ended_lately = connect_session(recent)
        # An old session whose attempt is recent stays as long as the attempt does.
        still_referenced = connect_session(old)
        attempts = {
            "old": [ConnectAttempt(session_id=s.id, status="succeeded", connection_id=connection.id, created_at=old)
                    for s in ended_long_ago],
            "recent": [ConnectAttempt(session_id=ended_lately.id, status="failed", created_at=recent),
                       ConnectAttempt(session_id=still_referenced.id, status="succeeded", created_at=recent)],
        }
        session.add_all(attempts["old"] + attempts["recent"])
        events = {"old": [Event(connection_id=connection.id, tenant_id=tenant.id, type="refreshed", created_at=old)
                          for _ in range(7)],
                  "recent": [Event(connection_id=connection.id, tenant_id=tenant.id, type="refreshed",
                                   created_at=recent) for _ in range(3)]}
        # An old event whose delivery is still being retried, one whose delivery was given up.
        retried, given_up = (Event(connection_id=connection.id, tenant_id=tenant.id, type="revoked", created_at=old)
                             for _ in "12")
        session.add_all(events["old"] + events["recent"] + [retried, given_up])
        session.flush()

        def delivery(event: Event, created_at: object, **fields: object) -> WebhookDelivery:
            return WebhookDelivery(tenant_id=tenant.id, event_id=event.id, type="connection.revoked", body="{}",
                                   created_at=created_at, **fields)

        deliveries = {
            "old": [delivery(event, old, delivered_at=old) for event in events["old"][:3]] +
                   [delivery(given_up, old, attempts=10)],
            "recent": [delivery(events["recent"][0], recent, delivered_at=recent),
                       delivery(retried, old, next_attempt_at=now)],
        }
        session.add_all(deliveries["old"] + deliveries["recent"])

    counts = prune(rt, now=now, batch=2)

    assert counts == {"webhook_deliveries": 4, "events": 8, "connect_attempts": 5, "connect_sessions": 5}
    assert _ids(rt, WebhookDelivery) == {d.id for d in deliveries["recent"]}
    assert _ids(rt, Event) == {event.id for event in events["recent"]} | {retried.id}
    assert _ids(rt, ConnectAttempt) == {attempt.id for attempt in attempts["recent"]}
    assert _ids(rt, ConnectSession) == {ended_lately.id, still_referenced.id}
    assert _ids(rt, Connection) == {connection.id}  # connections are never pruned
    assert prune(rt, now=now, batch=2) == {"webhook_deliveries": 0, "events": 0, "connect_attempts": 0,
                                           "connect_sessions": 0}
