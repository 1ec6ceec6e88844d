"""JSON views of the stored rows; never a secret."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Connection, Event, Integration, WebhookDelivery


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def integration_json(integration: Integration, redirect_uri: str) -> dict[str, Any]:
    """An integration as the API shows it (the client secret is never shown)."""
    return {
        "id": integration.id,
        "provider": integration.provider,
        "client_id": integration.client_id,
        "scopes": integration.scopes,
        "authorize_url": integration.authorize_url,
        "token_url": integration.token_url,
        "revoke_url": integration.revoke_url,
        "issuer": integration.issuer,
        "token_auth_method": integration.token_auth_method,
        "pkce": integration.pkce,
        "extra_authorize_params": integration.extra_authorize_params,
        "redirect_uri": redirect_uri,
        "created_at": iso(integration.created_at),
    }


def connection_json(connection: Connection) -> dict[str, Any]:
    """A connection as the API shows it (no token)."""
    return {
        "id": connection.id,
        "integration_id": connection.integration_id,
        "end_user_id": connection.end_user_id,
        "status": connection.status,
        "scopes": connection.scopes,
        "expires_at": iso(connection.expires_at),
        "last_refreshed_at": iso(connection.last_refreshed_at),
        "refresh_failures": connection.refresh_failures,
        "last_error": connection.last_error,
        "created_at": iso(connection.created_at),
        "updated_at": iso(connection.updated_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    """One entry of a connection's history."""
    return {"id": event.id, "type": event.type, "error": event.error, "created_at": iso(event.created_at)}


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    """One webhook delivery: its event, attempts and outcome."""
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "type": delivery.type,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "delivered_at": iso(delivery.delivered_at),
        "next_attempt_at": iso(delivery.next_attempt_at),
        "created_at": iso(delivery.created_at),
    }
