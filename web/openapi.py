"""The OpenAPI 3.1 document of the service as implemented, built once and served at
`GET /api/v1/openapi.json`. Request bodies come from the pydantic models; the answers
mirror `web/serializers.py`, `web/tokens.py` and the errors the views raise."""
from __future__ import annotations

from functools import cache
from typing import Any, get_args

from pydantic import BaseModel

from web.api import CONNECTION_STATUSES
from shared.webhooks import WEBHOOK_TYPES
from web.schemas import ConnectSessionIn, IntegrationIn, WebhookIn

Schema = dict[str, Any]

JSON, HTML, TEXT = "application/json", "text/html", "text/plain"
REF = "#/components/schemas/"
# The event types of the contract, in the order a connection's life goes through them.
EVENT_TYPES = ("created", "refreshed", "refresh_failed", "needs_reauth", "recovered", "reauthorized", "revoked")


def _ref(name: str) -> Schema:
    return {"$ref": REF + name}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _list_of(name: str, **extra: Schema) -> Schema:
    return _object({"data": {"type": "array", "items": _ref(name)}, **extra})


def _enum_of(model: type[BaseModel], field: str) -> Schema:
    """The string enum of a `Literal` field, so answers and bodies share one list."""
    return {"type": "string", "enum": list(get_args(model.model_fields[field].annotation))}


STRING: Schema = {"type": "string"}
OBJECT: Schema = {"type": "object"}
URI: Schema = {"type": "string", "format": "uri"}
TIME: Schema = {"type": "string", "format": "date-time"}
STRINGS: Schema = {"type": "array", "items": STRING}
STATUS: Schema = {"type": "string", "enum": list(CONNECTION_STATUSES)}

SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": _object(
        {"code": STRING, "message": STRING},
        {"details": {"type": "array", "items": _object({"field": STRING, "message": STRING})}},
    )}),
    "Integration": _object({
        "id": STRING, "provider": _enum_of(IntegrationIn, "provider"), "client_id": STRING, "scopes": STRINGS,
        "authorize_url": URI, "token_url": URI, "revoke_url": _nullable(URI), "issuer": _nullable(STRING),
        "token_auth_method": _enum_of(IntegrationIn, "token_auth_method"), "pkce": {"type": "boolean"},
        "extra_authorize_params": {"type": "object", "additionalProperties": STRING},
        "redirect_uri": URI, "created_at": TIME,
    }),
    "ConnectSession": _object({"id": STRING, "connect_url": URI, "expires_at": TIME}),
    "Connection": _object({
        "id": STRING, "integration_id": STRING, "end_user_id": STRING,
        "status": STATUS, "scopes": STRINGS,
        "expires_at": _nullable(TIME), "last_refreshed_at": _nullable(TIME),
        "refresh_failures": {"type": "integer", "minimum": 0}, "last_error": _nullable(STRING),
        "created_at": TIME, "updated_at": TIME,
    }),
    "Token": _object({"access_token": STRING, "token_type": STRING, "expires_at": _nullable(TIME), "scopes": STRINGS}),
    "Event": _object({"id": STRING, "type": {"type": "string", "enum": list(EVENT_TYPES)},
                      "error": _nullable(STRING), "created_at": TIME}),
    "IntegrationList": _list_of("Integration"),
    "ConnectionPage": _list_of("Connection", next_cursor=_nullable(STRING)),
    "EventList": _list_of("Event"),
    "AttemptStatus": _object({"status": {"type": "string", "enum": ["pending", "succeeded", "failed"]}},
                             {"connection_id": STRING, "error": STRING}),
    "Webhook": _object({"url": _nullable(URI)}),
    "WebhookWithSecret": _object({"url": URI, "secret": STRING}),
    "Delivery": _object({
        "id": STRING, "event_id": STRING, "type": {"type": "string", "enum": list(WEBHOOK_TYPES.values())},
        "attempts": {"type": "integer", "minimum": 0}, "last_status": _nullable({"type": "integer"}),
        "last_error": _nullable(STRING), "delivered_at": _nullable(TIME), "next_attempt_at": _nullable(TIME),
        "created_at": TIME,
    }),
    "DeliveryPage": _list_of("Delivery", next_cursor=_nullable(STRING)),
    "Readiness": _object({"ready": {"type": "boolean"}, "checks": _object({"database": STRING, "redis": STRING})}),
}


def _body_schema(model: type[BaseModel], schemas: dict[str, Schema]) -> Schema:
    """The model's JSON Schema, its nested models hoisted into the components."""
    schema = model.model_json_schema(ref_template=REF + "{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return _ref(model.__name__)


def _content(schema: Schema, media: str = JSON) -> Schema:
    return {media: {"schema": schema}}


def _ok(description: str, schema: Schema, media: str = JSON, **headers: Schema) -> Schema:
    response: Schema = {"description": description, "content": _content(schema, media)}
    return {**response, "headers": headers} if headers else response


def _error(description: str, *codes: str, **headers: Schema) -> Schema:
    """An error answer whose `error.code` is one of `codes`."""
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}]}
    return _ok(description, schema, JSON, **headers)


def _header(description: str, schema: Schema = STRING) -> Schema:
    return {"description": description, "schema": schema}


def _redirect(description: str, location: str) -> Schema:
    return {"description": description, "headers": {"Location": _header(location)}}


NO_STORE = _header("no-store: the answer carries a secret", {"type": "string", "const": "no-store"})

# Error answers shared by several operations: name -> (status, answer).
SHARED_ERRORS: dict[str, tuple[str, Schema]] = {
    "InvalidJson": ("400", _error("The body is not a JSON object", "invalid_json")),
    "Unauthorized": ("401", _error("The API key is missing or unknown", "unauthorized",
                                   **{"WWW-Authenticate": _header("Bearer challenge")})),
    "NotFound": ("404", _error("No such resource for this tenant (also another tenant's id)", "not_found")),
    "NotUsable": ("409", _error("The connection cannot give a token", "needs_reauth", "revoked")),
    "TooLarge": ("413", _error("The body is larger than 256 KiB", "request_entity_too_large")),
    "InvalidFields": ("422", _error("Fields are missing or invalid; `details` names each", "invalid_fields")),
    "RefreshPending": ("503", _error("The refresh did not finish within TOKEN_WAIT_SECONDS", "refresh_pending",
                                     **{"Retry-After": _header("seconds", {"type": "integer"})})),
}


def _use(*names: str) -> dict[str, Schema]:
    """Shared error answers by name, keyed by their status."""
    return {SHARED_ERRORS[name][0]: {"$ref": "#/components/responses/" + name} for name in names}


def _path_param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _query(name: str, schema: Schema = STRING, description: str | None = None) -> Schema:
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**param, "description": description} if description else param


def _plain(operation_id: str, tag: str, responses: dict[str, Schema], **more: Any) -> Schema:
    """An operation without security."""
    return {"operationId": operation_id, "tags": [tag], "responses": responses, **more}


def _api(operation_id: str, tag: str, responses: dict[str, Schema], **more: Any) -> Schema:
    """A tenant API operation: it needs the bearer API key."""
    return {**_plain(operation_id, tag, responses, **more), "security": [{"bearerAuth": []}]}


def _paths(integration_in: Schema, connect_session_in: Schema, webhook_in: Schema) -> dict[str, Schema]:
    integration_id, connection_id = _path_param("integration_id"), _path_param("connection_id")
    token_answers = {"200": _ok("The access token", _ref("Token"), JSON, **{"Cache-Control": NO_STORE}),
                     **_use("Unauthorized", "NotFound", "NotUsable", "RefreshPending")}
    return {
        "/api/v1/integrations": {
            "post": _api("createIntegration", "integrations", {
                "201": _ok("The integration (never the secret)", _ref("Integration")),
                **_use("InvalidJson", "Unauthorized", "TooLarge", "InvalidFields"),
            }, requestBody={"required": True, "content": _content(integration_in)}),
            "get": _api("listIntegrations", "integrations", {
                "200": _ok("The tenant's integrations, oldest first", _ref("IntegrationList")),
                **_use("Unauthorized"),
            }),
        },
        "/api/v1/integrations/{integration_id}": {
            "parameters": [integration_id],
            "get": _api("getIntegration", "integrations", {
                "200": _ok("The integration", _ref("Integration")), **_use("Unauthorized", "NotFound")}),
        },
        "/api/v1/connect-sessions": {
            "post": _api("createConnectSession", "connect", {
                "201": _ok("A single-use connect link", _ref("ConnectSession")),
                **_use("InvalidJson", "Unauthorized", "NotFound", "TooLarge", "InvalidFields"),
                "409": _error("connection_id belongs to another integration", "integration_mismatch"),
            }, requestBody={"required": True, "content": _content(connect_session_in)}),
        },
        "/api/v1/connections": {
            "get": _api("listConnections", "connections", {
                "200": _ok("A page of connections, oldest first", _ref("ConnectionPage")),
                "400": _error("A bad query parameter", "invalid_cursor", "invalid_limit", "invalid_status"),
                **_use("Unauthorized"),
            }, parameters=[_query("end_user_id"), _query("integration_id"), _query("status", STATUS),
                           _query("limit", {"type": "integer", "default": 50, "minimum": 1, "maximum": 200},
                                  "page size; values outside 1..200 are clamped"),
                           _query("cursor", STRING, "the next_cursor of the previous page")]),
        },
        "/api/v1/connections/{connection_id}": {
            "parameters": [connection_id],
            "get": _api("getConnection", "connections", {
                "200": _ok("The connection (no token)", _ref("Connection")), **_use("Unauthorized", "NotFound")}),
        },
        "/api/v1/connections/{connection_id}/token": {
            "parameters": [connection_id],
            "get": _api("getConnectionToken", "connections", token_answers,
                        description="Refreshes first when the token is due (single flight)."),
        },
        "/api/v1/connections/{connection_id}/refresh": {
            "parameters": [connection_id],
            "post": _api("refreshConnection", "connections", token_answers,
                         description="Always refreshes; concurrent calls share one provider call."),
        },
        "/api/v1/connections/{connection_id}/events": {
            "parameters": [connection_id],
            "get": _api("listConnectionEvents", "connections", {
                "200": _ok("The connection's history, oldest first", _ref("EventList")),
                **_use("Unauthorized", "NotFound"),
            }),
        },
        "/api/v1/webhook": {
            "put": _api("putWebhook", "webhooks", {
                "200": _ok("The URL and the signing secret (made on the first PUT, new with rotate_secret)",
                           _ref("WebhookWithSecret"), JSON, **{"Cache-Control": NO_STORE}),
                **_use("InvalidJson", "Unauthorized", "TooLarge", "InvalidFields"),
            }, requestBody={"required": True, "content": _content(webhook_in)}),
            "get": _api("getWebhook", "webhooks", {
                "200": _ok("The URL (null when none is set), never the secret", _ref("Webhook")),
                **_use("Unauthorized"),
            }),
            "delete": _api("deleteWebhook", "webhooks", {
                "204": {"description": "The URL and secret are removed; pending deliveries are dropped"},
                **_use("Unauthorized"),
            }),
        },
        "/api/v1/webhook/deliveries": {
            "get": _api("listWebhookDeliveries", "webhooks", {
                "200": _ok("A page of deliveries, newest first", _ref("DeliveryPage")),
                "400": _error("A bad query parameter", "invalid_cursor", "invalid_limit"),
                **_use("Unauthorized"),
            }, parameters=[_query("limit", {"type": "integer", "default": 50, "minimum": 1, "maximum": 200},
                                  "page size; values outside 1..200 are clamped"),
                           _query("cursor", STRING, "the next_cursor of the previous page")]),
        },
        "/api/v1/webhook/deliveries/{delivery_id}/retry": {
            "parameters": [_path_param("delivery_id")],
            "post": _api("retryWebhookDelivery", "webhooks", {
                "202": _ok("The delivery, due now", _ref("Delivery")),
                **_use("Unauthorized", "NotFound"),
                "409": _error("The tenant has no webhook URL", "webhook_not_set"),
            }),
        },
        "/api/v1/openapi.json": {"get": _plain("getOpenApi", "meta", {"200": _ok("This document", OBJECT)})},
        "/connect/{token}": {
            "parameters": [_path_param("token")],
            "get": _plain("startConnect", "browser", {
                "302": _redirect("To the provider's authorize page", "the authorize URL"),
                "404": _ok("Unknown link", STRING, HTML),
                "410": _ok("Expired or already used link", STRING, HTML),
            }),
        },
        "/oauth/callback": {
            "get": _plain("oauthCallback", "browser", {
                "303": _redirect("To the attempt's status page", "/connect/attempts/{id}"),
                "400": _ok("Unknown or used state, or another browser", STRING, HTML),
                "404": _ok("The connect session is gone", STRING, HTML),
            }, parameters=[_query("state"), _query("code"), _query("error"), _query("iss")]),
        },
        "/connect/attempts/{attempt_id}": {
            "parameters": [_path_param("attempt_id")],
            "get": _plain("getConnectAttempt", "browser", {
                "200": {"description": "The attempt: a page, or JSON with Accept: application/json",
                        "content": {**_content(STRING, HTML), **_content(_ref("AttemptStatus"))}},
                "303": _redirect("The attempt ended: back to the session's return_url",
                                 "return_url with connection_id, status and error"),
                "404": {"description": "No such attempt",
                        "content": {**_content(STRING, HTML), **_content(_ref("Error"))}},
            }),
        },
        "/healthz": {"get": _plain("healthz", "operations", {"200": _ok("The process lives", STRING, TEXT)})},
        "/readyz": {"get": _plain("readyz", "operations", {
            "200": _ok("The database and Redis answer", _ref("Readiness")),
            "503": _ok("The database or Redis does not answer", _ref("Readiness")),
        })},
        "/metrics": {"get": _plain("metrics", "operations", {"200": _ok("Prometheus text exposition", STRING, TEXT)})},
    }


@cache
def document() -> dict[str, Any]:
    """The whole document; build it once, serve it many times (treat it as read-only)."""
    schemas = dict(SCHEMAS)
    integration_in = _body_schema(IntegrationIn, schemas)
    connect_session_in = _body_schema(ConnectSessionIn, schemas)
    webhook_in = _body_schema(WebhookIn, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "OAuth token service", "version": "1"},
        "paths": _paths(integration_in, connect_session_in, webhook_in),
        "components": {
            "schemas": schemas,
            "responses": {name: answer for name, (_, answer) in SHARED_ERRORS.items()},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "a tenant API key"}},
        },
    }
