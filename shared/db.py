"""Engine and sessions, built from the settings."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

PING_AFTER_IDLE_SECONDS = 10.0


def make_engine(database_url: str, pool_size: int = 10, max_overflow: int = 0) -> Engine:
    """An engine for PostgreSQL or SQLite; SQLite gets WAL and a busy timeout
    because web and workers write to the same file. Statement parameters never
    appear in errors or logs."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, hide_parameters=True)
    _ping_after_idle(engine)
    return engine


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only if it sat idle a while: a server
    restart is still noticed before use, without a round trip on every busy checkout."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure means a dead connection
            raise DisconnectionError() from error
        if not alive:
            raise DisconnectionError()


class Database:
    """One engine and its session factory."""

    def __init__(self, database_url: str, pool_size: int = 10, max_overflow: int = 0) -> None:
        self.engine = make_engine(database_url, pool_size, max_overflow)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def autocommit(self) -> Iterator[Session]:
        """A session whose statements each commit on their own, for a request that writes
        at most one statement: no BEGIN and no COMMIT round trips around it."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            session = Session(connection, expire_on_commit=False)
            try:
                yield session
                session.commit()
            finally:
                session.close()

    def dispose(self) -> None:
        """Drop pooled connections (after a fork)."""
        self.engine.dispose()


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. Session.execute() answers DML with a
    CursorResult, which SQLAlchemy's annotations widen to a plain Result."""
    assert isinstance(result, CursorResult), type(result)
    return result.rowcount
