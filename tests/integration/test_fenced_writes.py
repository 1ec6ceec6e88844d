"""The batch's fenced write on the real database (PostgreSQL when DATABASE_URL names
one: `UPDATE … FROM unnest(…) RETURNING`; SQLite otherwise)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from shared import migrate
from shared.db import Database
from shared.models import Connection, utcnow
from shared.tokens import fenced_update_many
from tests.conftest import seed_integration

pytestmark = pytest.mark.integration


def test_many_fenced_writes_in_one_statement_land_only_where_the_version_still_matches(
        new_database: Callable[[], str]) -> None:
    url = new_database()
    migrate.upgrade(url)
    database = Database(url)
    now = utcnow()
    with database.session() as session:
        tenant, integration = seed_integration(session)
        rows = [Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id=f"u{n}", scopes=["old"],
                           access_token_enc=f"at{n}", refresh_token_enc=f"rt{n}", expires_at=now) for n in range(4)]
        session.add_all(rows)
    rotated, kept, stale, untouched = (row.id for row in rows)
    later = now + timedelta(hours=1)
    common = {"access_token_enc": "new-at", "token_type": "Bearer", "expires_at": later, "lifetime_seconds": 3600,
              "status": "active", "refresh_failures": 0, "last_error": None, "updated_at": now,
              "last_refreshed_at": now}
    with database.session() as session:
        written = fenced_update_many(session, [
            (rotated, 1, {**common, "refresh_token_enc": "new-rt", "scopes": ["a", "b"]}),
            (kept, 1, {**common, "expires_at": None, "lifetime_seconds": None}),
            (stale, 0, {**common, "refresh_token_enc": "lost"}),
        ])
    assert written == {rotated, kept}
    with database.session() as session:
        stored = {row.id: row for row in session.query(Connection)}
    row = stored[rotated]
    assert (row.version, row.refresh_token_enc, row.scopes) == (2, "new-rt", ["a", "b"])
    assert stored[rotated].expires_at == later and stored[rotated].access_token_enc == "new-at"
    assert (stored[kept].version, stored[kept].refresh_token_enc, stored[kept].scopes) == (2, "rt1", ["old"])
    assert stored[kept].expires_at is None and stored[kept].last_refreshed_at == now
    assert (stored[stale].version, stored[stale].refresh_token_enc, stored[stale].access_token_enc) == (1, "rt2", "at2")
    assert stored[untouched].version == 1
    database.dispose()
