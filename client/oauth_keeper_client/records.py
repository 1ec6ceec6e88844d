"""respond.io's records as plain dataclasses; `raw` keeps the whole answer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Contact:
    """A contact of the workspace."""

    id: int
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    language: str | None
    country_code: str | None
    custom_fields: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Contact:
        fields = {item["name"]: item.get("value") for item in body.get("custom_fields") or []
                  if isinstance(item, dict) and "name" in item}
        return cls(body["id"], body.get("firstName"), body.get("lastName"), body.get("email"), body.get("phone"),
                   body.get("language"), body.get("countryCode"), fields, body)


@dataclass(frozen=True)
class Channel:
    """A messaging channel of the workspace (WhatsApp, Messenger, email…)."""

    id: int
    name: str
    source: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Channel:
        return cls(body["id"], body.get("name", ""), body.get("source", ""), body)


@dataclass(frozen=True)
class WorkspaceUser:
    """A user (agent, manager, owner) of the workspace."""

    id: int
    first_name: str | None
    last_name: str | None
    email: str | None
    role: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> WorkspaceUser:
        return cls(body["id"], body.get("firstName"), body.get("lastName"), body.get("email"), body.get("role"), body)


@dataclass(frozen=True)
class SentMessage:
    """The answer to a message sent to a contact."""

    contact_id: int
    message_id: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SentMessage:
        return cls(body["contactId"], body["messageId"])
