"""The closed sets of values that the database, the API and its OpenAPI document share:
a value is added here once and is then valid in a column, an answer and the document."""
from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import Enum


class ConnectionStatus(StrEnum):
    """Whether a connection can give a token."""

    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    REVOKED = "revoked"


class AttemptStatus(StrEnum):
    """A connect attempt: pending, then succeeded or failed, never back."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventType(StrEnum):
    """The entries of a connection's history, in the order its life goes through them."""

    CREATED = "created"
    REFRESHED = "refreshed"
    REFRESH_FAILED = "refresh_failed"
    NEEDS_REAUTH = "needs_reauth"
    RECOVERED = "recovered"
    REAUTHORIZED = "reauthorized"
    REVOKED = "revoked"


class ProviderKind(StrEnum):
    """Which OAuth server an integration talks to."""

    RESPONDIO = "respondio"
    OAUTH2 = "oauth2"
    SANDBOX = "sandbox"


class TokenAuthMethod(StrEnum):
    """How the client authenticates at the token endpoint (RFC 6749 §2.3.1)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"


def column_type(enum: type[StrEnum], length: int) -> Enum:
    """A VARCHAR column holding the enum's values (no database enum type, no CHECK
    constraint, so adding a value needs no migration); writing any other value fails."""
    def values(members: Any) -> list[str]:
        return [member.value for member in members]

    return Enum(enum, native_enum=False, create_constraint=False, length=length, validate_strings=True,
                values_callable=values)
