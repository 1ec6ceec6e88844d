"""Tokens on demand: refresh through the workers first when needed (single flight),
waiting at most TOKEN_WAIT_SECONDS. The web never calls the provider.

The hot path, a token that is not due, reads the connection from the process's
cache (the row as stored, the token still encrypted) and touches neither the
database nor the broker; `web.updates` keeps that cache true."""
from __future__ import annotations

import time
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, select

from shared import refreshes
from shared.models import Connection, utcnow
from shared.tokens import needs_refresh, refresh_mark
from web import caches, runtime
from web.errors import ApiError
from web.serializers import iso
from web.updates import UpdateListener

# The fallback poll, should a published update be missed.
POLL_SECONDS = 0.5
# What the answer and the due rule need of a connection.
_COLUMNS = ("id", "tenant_id", "status", "access_token_enc", "refresh_token_enc", "token_type", "expires_at",
            "lifetime_seconds", "last_refreshed_at", "scopes", "version")
_READ = select(*(getattr(Connection, name) for name in _COLUMNS)).where(Connection.id == bindparam("id"))


def listener() -> UpdateListener:
    """The process's update listener."""
    return current_app.extensions["updates"]


def read_connection(connection_id: str) -> Connection | None:
    """The connection as stored, read from the database now, and kept in the cache."""
    updates = listener()
    updates.start()
    read_at = caches.now()  # before the read: a write announced after this drops it
    with runtime().db.engine.connect() as db:
        row = db.execute(_READ, {"id": connection_id}).first()
    if row is None:
        return None
    connection = Connection(**row._mapping)  # transient, never attached to a session
    updates.connections.put(connection_id, connection_id, connection, read_at)
    return connection


def stored_connection(connection_id: str) -> Connection | None:
    """The connection as stored: from the cache, else from the database."""
    return listener().connections.get(connection_id) or read_connection(connection_id)


def _usable(connection: Connection) -> None:
    if connection.status == "needs_reauth":
        raise ApiError(409, "needs_reauth", "the connection needs the end user to authorize again")
    if connection.status != "active" or not connection.access_token_enc:
        raise ApiError(409, "revoked", "the connection is revoked")


def token_json(connection: Connection) -> dict[str, Any]:
    """The current access token of a usable connection, or the 409 that says why not."""
    _usable(connection)
    return {
        "access_token": runtime().cipher.decrypt(connection.access_token_enc),  # type: ignore[arg-type]
        "token_type": connection.token_type,
        "expires_at": iso(connection.expires_at),
        "scopes": connection.scopes,
    }


def fresh_token(connection: Connection, force: bool) -> dict[str, Any]:
    """The connection's token, refreshed first when it is due (or always, when forced)."""
    rt = runtime()
    _usable(connection)
    margin = rt.settings.refresh_margin_seconds
    if not force and not needs_refresh(connection, None, margin):
        return token_json(connection)
    deadline = time.monotonic() + rt.settings.token_wait_seconds
    with listener().watch(connection.id) as updated:
        current = read_connection(connection.id) or connection  # the cached row may be a moment old
        seen = refresh_mark(current) if force else None
        while True:
            if not needs_refresh(current, seen, margin):
                return token_json(current)
            refreshes.request_refresh(rt.redis, rt.celery, connection.id, seen)  # no-op while one is queued
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            updated.wait(min(remaining, POLL_SECONDS))
            updated.clear()
            current = read_connection(connection.id) or current
    if not force and current.expires_at and current.expires_at > utcnow():
        return token_json(current)  # the refresh is late, but the stored token is still valid
    raise ApiError(503, "refresh_pending", "the refresh did not finish in time; try again shortly",
                   headers={"Retry-After": "1"})
