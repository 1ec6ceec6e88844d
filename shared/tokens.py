"""The rules of the token lifecycle, in one place: when a connection is due,
how new tokens are written (fenced by version), and how failures are classed."""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Text, bindparam, cast, column, func, insert, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update
from sqlalchemy.types import TypeEngine

from shared.crypto import Cipher
from shared.db import rowcount
from shared.models import Connection, Event, new_id, utcnow
from shared.providers import ProviderError, TokenSet
from shared.webhooks import add_delivery


def margin_for(lifetime_seconds: int | None, margin_seconds: int) -> float:
    """How long before expiry a token is due: the margin, or half the lifetime
    of tokens that live less than twice the margin."""
    if lifetime_seconds and lifetime_seconds < 2 * margin_seconds:
        return lifetime_seconds / 2
    return float(margin_seconds)


def due_at(expires_at: datetime | None, lifetime_seconds: int | None, margin_seconds: int) -> datetime | None:
    """When a token becomes due; None for a token that never expires."""
    if expires_at is None:
        return None
    return expires_at - timedelta(seconds=margin_for(lifetime_seconds, margin_seconds))


def is_due(connection: Connection, margin_seconds: int, now: datetime | None = None) -> bool:
    """Whether an active connection should be refreshed now."""
    when = due_at(connection.expires_at, connection.lifetime_seconds, margin_seconds)
    return connection.status == "active" and when is not None and (now or utcnow()) >= when


def refresh_mark(connection: Connection) -> str:
    """Which refresh produced the stored token: a forced refresh is done once this
    changes. Compared for equality only, so no two hosts' clocks are ever compared."""
    return connection.last_refreshed_at.isoformat() if connection.last_refreshed_at else "never"


def needs_refresh(connection: Connection, seen: str | None, margin_seconds: int) -> bool:
    """Whether a refresh should (still) happen: a forced one until a refresh lands
    after the mark `seen` was read, any other while the connection is due."""
    if connection.status != "active":
        return False
    # Without a refresh token nothing can be done, forced or not, until the token
    # expires; then the connection needs the end user again (the refresh attempt
    # records that). Until then the stored token is served.
    if not connection.refresh_token_enc and (connection.expires_at is None or connection.expires_at > utcnow()):
        return False
    if seen is not None:
        return refresh_mark(connection) == seen
    return is_due(connection, margin_seconds)


def token_values(tokens: TokenSet, cipher: Cipher, now: datetime | None = None) -> dict[str, Any]:
    """Column values for a fresh token response; a response without a refresh
    token keeps the stored one (the key is left out)."""
    now = now or utcnow()
    values: dict[str, Any] = {
        "access_token_enc": cipher.encrypt(tokens.access_token),
        "token_type": tokens.token_type,
        "expires_at": now + timedelta(seconds=tokens.expires_in) if tokens.expires_in is not None else None,
        "lifetime_seconds": tokens.expires_in,
        "status": "active",
        "refresh_failures": 0,
        "last_error": None,
        "updated_at": now,
    }
    if tokens.refresh_token:
        values["refresh_token_enc"] = cipher.encrypt(tokens.refresh_token)
    if tokens.scopes is not None:
        values["scopes"] = tokens.scopes
    return values


def _is_json(name: str) -> bool:
    return isinstance(Connection.__table__.c[name].type, JSON)


def _carried(name: str) -> TypeEngine[Any]:
    """The type a column's new values travel as in an array: JSON as its text (PostgreSQL
    would read a list of JSON lists as one two-dimensional array), the rest as themselves."""
    return Text() if _is_json(name) else Connection.__table__.c[name].type


@lru_cache(maxsize=64)
def _fenced_one(names: tuple[str, ...]) -> Update:
    """`UPDATE … SET <names> WHERE id = ? AND version = ?`, built once per set of columns
    (so SQLAlchemy finds it compiled)."""
    table = Connection.__table__
    return (update(table).where(table.c.id == bindparam("fence_id"), table.c.version == bindparam("fence_version"))
            .values(version=table.c.version + 1,
                    **{name: bindparam(f"new_{name}", type_=table.c[name].type) for name in names}))


@lru_cache(maxsize=64)
def _fenced_many(names: tuple[str, ...]) -> Update:
    """The same for many rows at once on PostgreSQL, built once per set of columns: every
    column's new values in one array, `UPDATE … FROM unnest(…) AS v WHERE id = v.id AND
    version = v.version RETURNING id`. Its text is the same for any number of rows."""
    table = Connection.__table__
    names_all = ("id", "version", *names)
    arrays = [bindparam(f"new_{name}", type_=ARRAY(_carried(name))) for name in names_all]
    rows = func.unnest(*arrays).table_valued(*(column(name, _carried(name)) for name in names_all)).render_derived(
        name="v")
    return (update(table).where(table.c.id == rows.c.id, table.c.version == rows.c.version)
            .values(version=table.c.version + 1,
                    **{name: cast(rows.c[name], JSON) if _is_json(name) else rows.c[name] for name in names})
            .returning(table.c.id))


def fenced_update(session: Session, connection_id: str, version: int, values: dict[str, Any]) -> bool:
    """`UPDATE … WHERE id = ? AND version = ?`, bumping the version. False means
    someone else wrote first and this writer's result must be dropped."""
    # Core, and one statement per set of columns: no ORM bookkeeping on the hot path.
    result = session.execute(_fenced_one(tuple(sorted(values))),
                             {"fence_id": connection_id, "fence_version": version,
                              **{f"new_{name}": value for name, value in values.items()}})
    return rowcount(result) == 1


def fenced_update_many(session: Session, writes: list[tuple[str, int, dict[str, Any]]]) -> set[str]:
    """`fenced_update` for many connections in one statement per set of columns on
    PostgreSQL (`_fenced_many`), one fenced update each on SQLite (in-process, so no round
    trips to save). Answers the ids written; the others lost to a newer write."""
    if session.get_bind().dialect.name != "postgresql":
        return {cid for cid, version, values in writes if fenced_update(session, cid, version, values)}
    shapes: dict[tuple[str, ...], list[tuple[str, int, dict[str, Any]]]] = {}
    for write in writes:
        shapes.setdefault(tuple(sorted(write[2])), []).append(write)
    written: set[str] = set()
    for names, group in shapes.items():
        params: dict[str, list[Any]] = {"new_id": [cid for cid, _, _ in group],
                                        "new_version": [version for _, version, _ in group]}
        for name in names:
            carried = [vals[name] for _, _, vals in group]
            if _is_json(name):
                carried = [None if value is None else json.dumps(value) for value in carried]
            params[f"new_{name}"] = carried
        written.update(session.execute(_fenced_many(names), params).scalars())
    return written


_EVENTS = insert(Event.__table__)


def record_events(session: Session, entries: Sequence[tuple[Connection, str, str | None]]) -> None:
    """Append (connection, type, error) entries to the connections' histories in one
    INSERT, and the webhook delivery of each (an outbox row in the same transaction) whose
    type has one, when the tenant has a URL."""
    if not entries:
        return
    # Each entry a microsecond after the one before, so a history lists them in this order.
    now = utcnow()
    ids, times = [new_id("evt") for _ in entries], [now + timedelta(microseconds=n) for n in range(len(entries))]
    session.execute(_EVENTS, [{"id": event_id, "connection_id": connection.id, "tenant_id": connection.tenant_id,
                               "type": type_, "error": error, "created_at": created_at}
                              for event_id, created_at, (connection, type_, error) in zip(ids, times, entries,
                                                                                          strict=True)])
    for event_id, created_at, (connection, type_, error) in zip(ids, times, entries, strict=True):
        add_delivery(session, connection, event_id, type_, error, created_at)


def record_event(session: Session, connection: Connection, type_: str, error: str | None = None) -> None:
    """Append one entry to a connection's history (see `record_events`)."""
    record_events(session, [(connection, type_, error)])


class Failure(StrEnum):
    """What follows a failed token request."""

    REAUTH = "reauth"  # the grant is gone: needs_reauth, no retry
    RATE_LIMITED = "rate_limited"  # retry after Retry-After
    TRANSIENT = "transient"  # retry with backoff


REAUTH_ERRORS = frozenset({"invalid_grant", "unauthorized_client"})


TRANSIENT_ERRORS = frozenset({"timeout", "connection_error"})


def is_transient(error: ProviderError) -> bool:
    """Whether a one-shot call (a code exchange, a revocation) may be tried again: a
    5xx, a timeout or a connection that failed; never any 4xx."""
    if error.status is None:
        return error.error in TRANSIENT_ERRORS
    return error.status >= 500


def classify(error: ProviderError) -> Failure:
    """The failure class of a provider error."""
    if error.error in REAUTH_ERRORS:
        return Failure.REAUTH
    if error.status == 429:
        return Failure.RATE_LIMITED
    return Failure.TRANSIENT
