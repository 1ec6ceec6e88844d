"""Stored rows as the API's answer models (`web/schemas.py`); never a secret."""
from __future__ import annotations

from datetime import datetime

from flask import Response, current_app
from pydantic import BaseModel

from shared import models
from web import schemas


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def answer(model: BaseModel, status: int = 200, *, exclude_none: bool = False) -> Response:
    """A JSON response of an answer model, its fields in the documented order."""
    return current_app.response_class(model.model_dump_json(exclude_none=exclude_none), status,
                                      mimetype="application/json")


def integration_out(integration: models.Integration, redirect_uri: str) -> schemas.Integration:
    """An integration as the API shows it (the client secret is never shown)."""
    return schemas.Integration(
        id=integration.id,
        provider=integration.provider,
        client_id=integration.client_id,
        scopes=integration.scopes,
        authorize_url=integration.authorize_url,
        token_url=integration.token_url,
        revoke_url=integration.revoke_url,
        api_base_url=integration.api_base_url,
        issuer=integration.issuer,
        token_auth_method=integration.token_auth_method,
        pkce=integration.pkce,
        extra_authorize_params=integration.extra_authorize_params,
        redirect_uri=redirect_uri,
        created_at=integration.created_at,
    )


def connection_out(connection: models.Connection) -> schemas.Connection:
    """A connection as the API shows it (no token)."""
    return schemas.Connection.model_validate(connection)


def event_out(event: models.Event) -> schemas.Event:
    """One entry of a connection's history."""
    return schemas.Event.model_validate(event)


def delivery_out(delivery: models.WebhookDelivery) -> schemas.Delivery:
    """One webhook delivery: its event, attempts and outcome."""
    return schemas.Delivery.model_validate(delivery)
