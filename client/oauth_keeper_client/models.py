"""The service's answers as plain dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time of the API (`…Z`) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class Token:
    """A connection's access token; `repr` never shows it."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scopes: list[str]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Token:
        return cls(body["access_token"], body.get("token_type", "Bearer"), parse_time(body.get("expires_at")),
                   list(body.get("scopes", [])))

    def is_due(self, margin_seconds: float, now: datetime | None = None) -> bool:
        """Whether the token expires within the margin (a token without expiry never is)."""
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at - timedelta(seconds=margin_seconds)


@dataclass(frozen=True)
class Integration:
    """A tenant's OAuth app at one provider (never its secret)."""

    id: str
    provider: str
    client_id: str
    scopes: list[str]
    api_base_url: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Integration:
        return cls(body["id"], body["provider"], body["client_id"], list(body.get("scopes", [])),
                   body.get("api_base_url"), body)


@dataclass(frozen=True)
class Connection:
    """One authorized account of one end user (no token)."""

    id: str
    integration_id: str
    end_user_id: str
    status: str
    scopes: list[str]
    expires_at: datetime | None
    last_error: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Connection:
        return cls(body["id"], body["integration_id"], body["end_user_id"], body["status"],
                   list(body.get("scopes", [])), parse_time(body.get("expires_at")), body.get("last_error"), body)


@dataclass(frozen=True)
class ConnectSession:
    """A single-use connect link for one end user."""

    id: str
    connect_url: str = field(repr=False)
    expires_at: datetime | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ConnectSession:
        return cls(body["id"], body["connect_url"], parse_time(body.get("expires_at")))
