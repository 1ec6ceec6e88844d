"""The tenant API, `/api/v1`: JSON in, JSON out, every resource scoped to its tenant."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from shared import refreshes
from shared.crypto import digest, new_secret
from shared.egress import ForbiddenAddress, validate_url
from shared.enums import ProviderKind
from shared.integrations import egress_rules
from shared.models import Connection, ConnectSession, Event, Integration, utcnow
from shared.providers import default_urls
from shared.queue import REVOKE_CONNECTION
from shared.revocations import mark_revoked
from web import runtime, schemas
from web.auth import authenticate
from web.errors import ApiError, not_found
from web.openapi import document, ok, operation
from web.openapi import error as error_answer
from web.schemas import ConnectionsQuery, ConnectSessionIn, EventsQuery, IntegrationIn, PageQuery
from web.serializers import answer, connection_out, event_out, integration_out
from web.tokens import fresh_token, listener, stored_connection

bp = Blueprint("api", __name__, url_prefix="/api/v1")

CONNECT_SESSION_TTL = timedelta(minutes=30)
Model = TypeVar("Model", bound=BaseModel)

NOT_FOUND = error_answer("No such resource for this tenant (also another tenant's id)", "not_found")
NOT_USABLE = error_answer("The connection cannot give a token", "needs_reauth", "revoked")
REFRESH_PENDING = error_answer("The refresh did not finish within TOKEN_WAIT_SECONDS", "refresh_pending",
                               **{"Retry-After": "seconds to wait before trying again"})


@bp.before_request
def _authenticate() -> None:
    if request.endpoint != "api.openapi" and "tenant_id" not in g:  # the rate limit may have done it
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


def _query(model: type[Model]) -> Model:
    """The query string validated against a model (empty values count as absent): a bad
    value answers 400 with the code `invalid_<parameter>`."""
    try:
        return model.model_validate({k: v for k, v in request.args.items() if v != ""})
    except ValidationError as error:
        name = str(error.errors()[0]["loc"][0])
        raise ApiError(400, f"invalid_{name}", f"{name}: {error.errors()[0]['msg']}") from None


def _owned(session: Session, model: type[Any], id_: str, what: str) -> Any:
    """A row of the caller's tenant, or 404 (also for another tenant's id)."""
    row = session.get(model, id_)
    if row is None or row.tenant_id != g.tenant_id:
        raise not_found(what)
    return row


@bp.post("/integrations")
@operation("createIntegration", "integrations", {201: ok(schemas.Integration, "The integration (never the secret)")},
           body=IntegrationIn)
def create_integration() -> Response:
    """Register a tenant's OAuth app; URLs default by provider kind."""
    body = _body(IntegrationIn)
    rt = runtime()
    if body.provider == ProviderKind.SANDBOX and not rt.settings.sandbox_provider:
        raise ApiError(422, "invalid_fields", "provider 'sandbox' needs SANDBOX_PROVIDER on",
                       details=[{"field": "provider", "message": "the sandbox provider is off"}])
    given = {"authorize_url": body.authorize_url, "token_url": body.token_url, "revoke_url": body.revoke_url,
             "issuer": body.issuer, "api_base_url": body.api_base_url}
    if body.provider == "sandbox" and any(given.values()):
        named = [name for name, value in given.items() if value]
        raise ApiError(422, "invalid_fields", "the sandbox always uses its own URLs",
                       details=[{"field": name, "message": "not allowed for the sandbox provider"} for name in named])
    urls = default_urls(body.provider, rt.settings.public_base_url)
    resolved = {name: given.get(name) or urls.get(name) for name in given}
    missing = [name for name in ("authorize_url", "token_url") if not resolved[name]]
    if missing:
        raise ApiError(422, "invalid_fields", f"provider {body.provider!r} needs {' and '.join(missing)}",
                       details=[{"field": name, "message": "required for this provider"} for name in missing])
    rules = egress_rules(rt.settings, body.provider)
    for name in ("token_url", "revoke_url", "api_base_url"):
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
    return answer(integration_out(integration, rt.settings.redirect_uri), 201)


@bp.get("/integrations")
@operation("listIntegrations", "integrations", {200: ok(schemas.IntegrationList, "The tenant's integrations")})
def list_integrations() -> Response:
    """The tenant's integrations."""
    rt = runtime()
    with rt.db.session() as session:
        rows = session.scalars(
            select(Integration).where(Integration.tenant_id == g.tenant_id).order_by(Integration.created_at)
        ).all()
        return answer(schemas.IntegrationList(data=[integration_out(row, rt.settings.redirect_uri) for row in rows]))


@bp.get("/integrations/<integration_id>")
@operation("getIntegration", "integrations", {200: ok(schemas.Integration, "The integration"), 404: NOT_FOUND})
def get_integration(integration_id: str) -> Response:
    """One integration of the tenant."""
    rt = runtime()
    with rt.db.session() as session:
        integration = _owned(session, Integration, integration_id, "integration")
        return answer(integration_out(integration, rt.settings.redirect_uri))


@bp.post("/connect-sessions")
@operation("createConnectSession", "connect", {
    201: ok(schemas.ConnectSession, "A connect link, spent by the first connect that succeeds through it"),
    404: NOT_FOUND,
    409: error_answer("connection_id belongs to another integration, or is revoked", "integration_mismatch",
                      "revoked"),
}, body=ConnectSessionIn)
def create_connect_session() -> Response:
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
            if connection.status == "revoked":
                raise ApiError(409, "revoked", "the connection is revoked; connect a new one instead")
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
    return answer(schemas.ConnectSession(id=connect_session.id,
                                         connect_url=f"{rt.settings.public_base_url}/connect/{token}",
                                         expires_at=connect_session.expires_at), 201)


def _cursor(row: Connection | Event) -> str:
    """The opaque position after a row, in (created_at, id) order."""
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
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


def _page(session: Session, model: type[Connection] | type[Event], query: Select[Any],
          args: PageQuery) -> tuple[list[Any], str | None]:
    """One page of a query in (created_at, id) order, from the cursor on, with the
    cursor of the next page (None on the last)."""
    if args.cursor:
        query = query.where(tuple_(model.created_at, model.id) > _after(args.cursor))
    rows = session.scalars(query.order_by(model.created_at, model.id).limit(args.limit + 1)).all()
    page = list(rows[:args.limit])
    return page, _cursor(page[-1]) if len(rows) > args.limit else None


@bp.get("/connections")
@operation("listConnections", "connections", {
    200: ok(schemas.ConnectionPage, "A page of connections, oldest first"),
    400: error_answer("A bad query parameter", "invalid_cursor", "invalid_limit", "invalid_status"),
}, query=ConnectionsQuery)
def list_connections() -> Response:
    """The tenant's connections, filtered, in pages."""
    args = _query(ConnectionsQuery)
    query = select(Connection).where(Connection.tenant_id == g.tenant_id)
    for name in ("end_user_id", "integration_id", "status"):
        if getattr(args, name) is not None:
            query = query.where(getattr(Connection, name) == getattr(args, name))
    with runtime().db.session() as session:
        page, next_cursor = _page(session, Connection, query, args)
    return answer(schemas.ConnectionPage(data=[connection_out(row) for row in page], next_cursor=next_cursor))


@bp.get("/connections/<connection_id>")
@operation("getConnection", "connections", {200: ok(schemas.Connection, "The connection (no token)"),
                                            404: NOT_FOUND})
def get_connection(connection_id: str) -> Response:
    """One connection, without its tokens."""
    with runtime().db.session() as session:
        return answer(connection_out(_owned(session, Connection, connection_id, "connection")))


@bp.get("/connections/<connection_id>/events")
@operation("listConnectionEvents", "connections", {
    200: ok(schemas.EventPage, "A page of the connection's history, oldest first"),
    400: error_answer("A bad query parameter", "invalid_cursor", "invalid_limit"),
    404: NOT_FOUND,
}, query=EventsQuery)
def connection_events(connection_id: str) -> Response:
    """The connection's history, oldest first, in pages."""
    args = _query(EventsQuery)
    with runtime().db.session() as session:
        _owned(session, Connection, connection_id, "connection")
        page, next_cursor = _page(session, Event, select(Event).where(Event.connection_id == connection_id), args)
    return answer(schemas.EventPage(data=[event_out(event) for event in page], next_cursor=next_cursor))


@bp.delete("/connections/<connection_id>")
@operation("deleteConnection", "connections", {
    202: ok(schemas.Connection, "The connection, now revoked (a second call changes nothing)"),
    404: NOT_FOUND,
})
def delete_connection(connection_id: str) -> Response:
    """Disconnect: `revoked` at once (no token is served after the 202); a worker then
    revokes the tokens at the provider (RFC 7009, where revoke_url is known) and erases
    them, whatever the provider says. A second call changes nothing."""
    rt = runtime()
    with rt.db.session() as session:
        _owned(session, Connection, connection_id, "connection")
        changed = mark_revoked(session, connection_id)
        connection = session.get(Connection, connection_id, populate_existing=True)
    assert connection is not None, "owned above and never deleted"
    if changed:
        # Announced after the commit, before the 202: every web process drops what it
        # knew of the connection, and waiters on a refresh wake to find it revoked. This
        # process drops it first, so its next request never sees the row of before.
        listener().connections.drop(connection_id)
        refreshes.announce(rt.redis, connection_id)
        rt.celery.send_task(REVOKE_CONNECTION, args=[connection_id], ignore_result=True)
    return answer(connection_out(connection), 202)


def _token_response(connection_id: str, force: bool) -> Response:
    """The token answer, never cached by a client or proxy."""
    connection = stored_connection(connection_id)
    if connection is None or connection.tenant_id != g.tenant_id:
        raise not_found("connection")
    # Serialized here rather than through jsonify: the hot path's answer is four known fields.
    return current_app.response_class(json.dumps(fresh_token(connection, force), separators=(",", ":")),
                                      mimetype="application/json", headers={"Cache-Control": "no-store"})


TOKEN_ANSWERS = {200: ok(schemas.Token, "The access token",
                         **{"Cache-Control": "no-store: the answer carries a secret"}),
                 404: NOT_FOUND, 409: NOT_USABLE, 503: REFRESH_PENDING}


@bp.get("/connections/<connection_id>/token")
@operation("getConnectionToken", "connections", TOKEN_ANSWERS)
def connection_token(connection_id: str) -> Response:
    """The access token, refreshed first when due."""
    return _token_response(connection_id, force=False)


@bp.post("/connections/<connection_id>/refresh")
@operation("refreshConnection", "connections", TOKEN_ANSWERS)
def refresh_connection(connection_id: str) -> Response:
    """Refresh now (sharing a refresh under way) and answer the new token."""
    return _token_response(connection_id, force=True)


@bp.get("/openapi.json")
@operation("getOpenApi", "meta", {200: ok(schemas.OpenApiDocument, "This document")}, public=True)
def openapi() -> Response:
    """The OpenAPI 3.1 document of this service (no key needed)."""
    return jsonify(document(current_app))
