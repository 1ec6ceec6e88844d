"""Pooled database connections survive the server dropping them."""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from shared import db

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgresql"),
                    reason="needs PostgreSQL (DATABASE_URL) to drop connections server-side")
def test_an_idle_connection_dropped_by_the_server_is_replaced_before_use(
        new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = new_database()
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    database = db.Database(url, pool_size=2)
    with database.session() as session:
        backend = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    admin = sa.create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    admin.dispose()

    with database.session() as session:
        assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar() != backend
    database.dispose()
