"""SQLAlchemy 2 models. Secrets are stored only as ciphertext (`*_enc`) or hashes."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shared.enums import AttemptStatus, ConnectionStatus, EventType, ProviderKind, TokenAuthMethod, column_type


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """An opaque id such as `conn_3kq9…`."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always hands back aware datetimes, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)  # whatever the session's time zone


class Base(DeclarativeBase):
    """Declarative base of every table."""

    if TYPE_CHECKING:
        # Every model maps a plain Table (SQLAlchemy types __table__ as any FromClause),
        # so the Core statements of the hot paths can take Model.__table__.
        __table__: ClassVar[Table]


class Tenant(Base):
    """A company hosting its integration here; its API key is kept only as a hash."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Integration(Base):
    """A tenant's OAuth app at one provider; the client secret is kept encrypted."""

    __tablename__ = "integrations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("int"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    provider: Mapped[ProviderKind] = mapped_column(column_type(ProviderKind, 20))
    client_id: Mapped[str] = mapped_column(Text)
    client_secret_enc: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    authorize_url: Mapped[str] = mapped_column(Text)
    token_url: Mapped[str] = mapped_column(Text)
    revoke_url: Mapped[str | None] = mapped_column(Text)
    issuer: Mapped[str | None] = mapped_column(Text)
    token_auth_method: Mapped[TokenAuthMethod] = mapped_column(column_type(TokenAuthMethod, 32),
                                                               default=TokenAuthMethod.CLIENT_SECRET_BASIC)
    pkce: Mapped[bool] = mapped_column(Boolean, default=True)
    extra_authorize_params: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # Where the provider's own API lives, for clients calling it with a connection's token.
    api_base_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConnectSession(Base):
    """A single-use link a tenant hands to one end user."""

    __tablename__ = "connect_sessions"
    __table_args__ = (Index("ix_connect_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cs"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    integration_id: Mapped[str] = mapped_column(ForeignKey("integrations.id"))
    end_user_id: Mapped[str] = mapped_column(String(200))
    return_url: Mapped[str | None] = mapped_column(Text)
    connection_id: Mapped[str | None] = mapped_column(ForeignKey("connections.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConnectAttempt(Base):
    """One browser's trip through the provider and back."""

    __tablename__ = "connect_attempts"
    __table_args__ = (Index("ix_connect_attempts_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("att"))
    session_id: Mapped[str] = mapped_column(ForeignKey("connect_sessions.id"), index=True)
    status: Mapped[AttemptStatus] = mapped_column(column_type(AttemptStatus, 16), default=AttemptStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    connection_id: Mapped[str | None] = mapped_column(ForeignKey("connections.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Connection(Base):
    """One authorized account of one end user, with its encrypted tokens."""

    __tablename__ = "connections"
    __table_args__ = (
        Index("ix_connections_status_expires_at", "status", "expires_at"),
        Index("ix_connections_tenant_end_user", "tenant_id", "end_user_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("conn"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    integration_id: Mapped[str] = mapped_column(ForeignKey("integrations.id"), index=True)
    end_user_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[ConnectionStatus] = mapped_column(column_type(ConnectionStatus, 16),
                                                     default=ConnectionStatus.ACTIVE)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    token_type: Mapped[str] = mapped_column(String(32), default="Bearer")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Lifetime of the current access token, for the due rule of short-lived tokens.
    lifetime_seconds: Mapped[int | None] = mapped_column(Integer)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refresh_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fencing token: every write of tokens bumps it, and only the holder of the
    # version it read may write.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Event(Base):
    """A connection's history, in order."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_connection_created", "connection_id", "created_at"),
                      Index("ix_events_created_at", "created_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("evt"))
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[EventType] = mapped_column(column_type(EventType, 32))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event to POST to a tenant's webhook (an outbox row, written with the event).

    `body` is the exact JSON sent, so every retry carries the same bytes. A delivery is
    due while `next_attempt_at` is set and past; it is cleared once delivered or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant_due", "tenant_id", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_webhook_deliveries_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whd"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
