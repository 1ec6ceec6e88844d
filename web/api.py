"""The tenant API, `/api/v1`: JSON in, JSON out, every resource scoped to its tenant."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from shared.crypto import digest, new_secret
from shared.egress import ForbiddenAddress, validate_url
from shared.integrations import egress_rules
from shared.models import Connection, ConnectSession, Event, Integration, utcnow
from shared.providers import default_urls
from web import runtime
from web.auth import authenticate
from web.errors import ApiError, not_found
from web.schemas import ConnectSessionIn, IntegrationIn
from web.serializers import connection_json, event_json, integration_json, iso
from web.tokens import fresh_token, stored_connection

bp = Blueprint("api", __name__, url_prefix="/api/v1")

CONNECT_SESSION_TTL = timedelta(minutes=30)
CONNECTION_STATUSES = ("active", "needs_reauth", "revoked")
Model = TypeVar("Model", bound=BaseModel)


@bp.before_request
def _authenticate() -> None:
    if request.endpoint != "api.openapi":
        authenticate()


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error.response()


def api_http_error(error: HTTPException) -> Response | HTTPException:
    """Errors under /api/ answer JSON too, including unknown paths (404) and methods (405)."""
    if not request.path.startswith(bp.url_prefix or "/api/"):
        return error
    code = (error.name or "error").lower().replace(" ", "_")
    response = ApiError(error.code or 500, code, error.description or error.name).response()
    if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


def _body(model: type[Model]) -> Model:
    """The JSON body validated against a model: 400 if it isn't JSON, 422 if fields are wrong."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # nested too deep to parse: as bad as any other non-JSON
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in error.errors()]
        first = details[0]
        raise ApiError(422, "invalid_fields", f"{first['field']}: {first['message']}", details=details) from None


def _owned(session: Session, model: type[Any], id_: str, what: str) -> Any:
    """A row of the caller's tenant, or 404 (also for another tenant's id)."""
    row = session.get(model, id_)
    if row is None or row.tenant_id != g.tenant_id:
        raise not_found(what)
    return row


@bp.post("/integrations")
def create_integration() -> tuple[Response, int]:
    """Register a tenant's OAuth app; URLs default by provider kind."""
    body = _body(IntegrationIn)
    rt = runtime()
    if body.provider == "sandbox" and not rt.settings.sandbox_provider:
        raise ApiError(422, "invalid_fields", "provider 'sandbox' needs SANDBOX_PROVIDER on",
                       details=[{"field": "provider", "message": "the sandbox provider is off"}])
    given = {"authorize_url": body.authorize_url, "token_url": body.token_url, "revoke_url": body.revoke_url,
             "issuer": body.issuer}
    if body.provider == "sandbox" and any(given.values()):
        named = [name for name, value in given.items() if value]
        raise ApiError(422, "invalid_fields", "the sandbox always uses its own URLs",
                       details=[{"field": name, "message": "not allowed for the sandbox provider"} for name in named])
    urls = default_urls(body.provider, rt.settings.public_base_url)
    resolved = {name: given.get(name) or urls.get(name) for name in ("authorize_url", "token_url", "revoke_url", "issuer")}
    missing = [name for name in ("authorize_url", "token_url") if not resolved[name]]
    if missing:
        raise ApiError(422, "invalid_fields", f"provider {body.provider!r} needs {' and '.join(missing)}",
                       details=[{"field": name, "message": "required for this provider"} for name in missing])
    rules = egress_rules(rt.settings, body.provider)
    for name in ("token_url", "revoke_url"):
        url = resolved[name]
        try:
            if url:
                validate_url(url, allow_private=rules.allow_private, require_https=rules.require_https)
        except ForbiddenAddress as error:
            raise ApiError(422, "invalid_fields", f"{name}: {error}",
                           details=[{"field": name, "message": str(error)}]) from None
    integration = Integration(
        tenant_id=g.tenant_id,
        provider=body.provider,
        client_id=body.client_id,
        client_secret_enc=rt.cipher.encrypt(body.client_secret),
        scopes=body.scopes,
        token_auth_method=body.token_auth_method,
        pkce=body.pkce,
        extra_authorize_params=body.extra_authorize_params,
        **resolved,
    )
    with rt.db.session() as session:
        session.add(integration)
    return jsonify(integration_json(integration, rt.settings.redirect_uri)), 201


@bp.get("/integrations")
def list_integrations() -> Response:
    """The tenant's integrations."""
    rt = runtime()
    with rt.db.session() as session:
        rows = session.scalars(
            select(Integration).where(Integration.tenant_id == g.tenant_id).order_by(Integration.created_at)
        ).all()
        return jsonify({"data": [integration_json(row, rt.settings.redirect_uri) for row in rows]})


@bp.get("/integrations/<integration_id>")
def get_integration(integration_id: str) -> Response:
    """One integration of the tenant."""
    rt = runtime()
    with rt.db.session() as session:
        integration = _owned(session, Integration, integration_id, "integration")
        return jsonify(integration_json(integration, rt.settings.redirect_uri))


@bp.post("/connect-sessions")
def create_connect_session() -> tuple[Response, int]:
    """A single-use connect link for one end user (30 minutes)."""
    body = _body(ConnectSessionIn)
    rt = runtime()
    token = new_secret(32)
    with rt.db.session() as session:
        _owned(session, Integration, body.integration_id, "integration")
        if body.connection_id:
            connection = _owned(session, Connection, body.connection_id, "connection")
            if connection.integration_id != body.integration_id:
                raise ApiError(409, "integration_mismatch", "the connection belongs to another integration")
        connect_session = ConnectSession(
            tenant_id=g.tenant_id,
            integration_id=body.integration_id,
            end_user_id=body.end_user_id,
            return_url=body.return_url,
            connection_id=body.connection_id,
            token_hash=digest(token),
            expires_at=utcnow() + CONNECT_SESSION_TTL,
        )
        session.add(connect_session)
    return jsonify({
        "id": connect_session.id,
        "connect_url": f"{rt.settings.public_base_url}/connect/{token}",
        "expires_at": iso(connect_session.expires_at),
    }), 201


def _cursor(connection: Connection) -> str:
    raw = json.dumps([connection.created_at.isoformat(), connection.id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        created, id_ = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        after = datetime.fromisoformat(created)
        if after.tzinfo is None:
            raise ValueError("naive time")
        return after, str(id_)
    except (ValueError, TypeError, RecursionError):
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API returned") from None


@bp.get("/connections")
def list_connections() -> Response:
    """The tenant's connections, filtered, in pages."""
    args = request.args
    try:
        limit = min(max(int(args.get("limit", 50)), 1), 200)
    except ValueError:
        raise ApiError(400, "invalid_limit", "limit must be a whole number") from None
    status = args.get("status")
    if status and status not in CONNECTION_STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(CONNECTION_STATUSES)}")
    query = select(Connection).where(Connection.tenant_id == g.tenant_id)
    for name in ("end_user_id", "integration_id", "status"):
        if args.get(name):
            query = query.where(getattr(Connection, name) == args[name])
    if args.get("cursor"):
        query = query.where(tuple_(Connection.created_at, Connection.id) > _after(args["cursor"]))
    query = query.order_by(Connection.created_at, Connection.id).limit(limit + 1)
    with runtime().db.session() as session:
        rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = _cursor(page[-1]) if len(rows) > limit else None
    return jsonify({"data": [connection_json(row) for row in page], "next_cursor": next_cursor})


@bp.get("/connections/<connection_id>")
def get_connection(connection_id: str) -> Response:
    """One connection, without its tokens."""
    with runtime().db.session() as session:
        return jsonify(connection_json(_owned(session, Connection, connection_id, "connection")))


@bp.get("/connections/<connection_id>/events")
def connection_events(connection_id: str) -> Response:
    """The connection's history."""
    with runtime().db.session() as session:
        _owned(session, Connection, connection_id, "connection")
        events = session.scalars(
            select(Event).where(Event.connection_id == connection_id).order_by(Event.created_at, Event.id)
        ).all()
        return jsonify({"data": [event_json(event) for event in events]})


def _token_response(connection_id: str, force: bool) -> Response:
    """The token answer, never cached by a client or proxy."""
    connection = stored_connection(connection_id)
    if connection is None or connection.tenant_id != g.tenant_id:
        raise not_found("connection")
    response = jsonify(fresh_token(connection, force))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/connections/<connection_id>/token")
def connection_token(connection_id: str) -> Response:
    """The access token, refreshed first when due."""
    return _token_response(connection_id, force=False)


@bp.post("/connections/<connection_id>/refresh")
def refresh_connection(connection_id: str) -> Response:
    """Refresh now (sharing a refresh under way) and answer the new token."""
    return _token_response(connection_id, force=True)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this service (no key needed)."""
    from web.openapi import document  # here, not on top: web.openapi imports this module

    return jsonify(document())
