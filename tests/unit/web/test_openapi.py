"""The OpenAPI document: served without a key, structurally sound, generated from the
routes and the models, and unable to drift from the answers the code really has (Flask
test client, in-memory stores)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Blueprint, Flask
from pydantic import BaseModel

from shared.enums import (
    AttemptStatus,
    ConnectionStatus,
    EventType,
    ProviderKind,
    TokenAuthMethod,
)
from shared.models import ConnectAttempt, Connection, Event, Integration, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant
from shared.tokens import record_event
from tests.unit.web.test_connect import RecordingCelery
from web import create_app, openapi, schemas
from web.openapi import document, ok

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
AUTOMATIC = {"HEAD", "OPTIONS"}  # Flask adds these to every rule
TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool,
                         "null": type(None)}


@pytest.fixture
def app(memory_runtime: Runtime) -> Flask:
    return create_app(runtime_=memory_runtime)


@pytest.fixture
def doc(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _template(rule: str) -> str:
    """Flask's `/a/<id>` (or `<path:id>`) as OpenAPI's `/a/{id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_served_without_a_key(app: Flask) -> None:
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["openapi"] == "3.1.0"
    assert body["info"]["title"] and body["info"]["version"]
    assert document(app) is document(app)  # built once


def test_every_api_route_is_documented_and_nothing_else(app: Flask, doc: dict[str, Any]) -> None:
    routes = {(_template(rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - AUTOMATIC}
    documented = {(path, method) for path, method, _ in _operations(doc)}
    api_routes = {(path, method) for path, method in routes
                  if path.startswith("/api/v1") and path != "/api/v1/openapi.json"}
    assert api_routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented routes the app does not have"
    browser_and_ops = {"/connect/{token}", "/oauth/callback", "/connect/attempts/{attempt_id}",
                       "/healthz", "/readyz", "/metrics"}
    assert browser_and_ops <= {path for path, _ in documented}


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    refs = set(_refs(doc))
    assert refs, "the document should share its schemas through $ref"
    for ref in refs:
        _resolve(doc, ref)


def test_operations_are_well_formed(doc: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, operation in _operations(doc):
        declared = doc["paths"][path].get("parameters", []) + operation.get("parameters", [])
        in_path = {p["name"] for p in declared if p["in"] == "path"}
        assert in_path == set(re.findall(r"{([^}]+)}", path)), (path, method)
        assert all(p["required"] for p in declared if p["in"] == "path")
        assert operation["responses"], (path, method)
        for status, answer in operation["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), (path, method, status)
            answer = _resolve(doc, answer["$ref"]) if "$ref" in answer else answer
            assert answer["description"], (path, method, status)


def test_the_tenant_api_needs_the_bearer_key_and_nothing_else_does(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in doc  # no global default: each operation says
    for path, method, operation in _operations(doc):
        if path.startswith("/api/v1") and path != "/api/v1/openapi.json":
            assert operation["security"] == [{"bearerAuth": []}], (path, method)
            assert "401" in operation["responses"], (path, method)
        else:
            assert "security" not in operation, (path, method)


def test_request_bodies_come_from_the_pydantic_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    integration_in = schemas["IntegrationIn"]
    provider = _resolve(doc, integration_in["properties"]["provider"]["$ref"])
    assert provider["enum"] == ["respondio", "oauth2", "sandbox"]
    assert "client_secret" in integration_in["required"]
    assert integration_in["additionalProperties"] is False
    assert set(schemas["ConnectSessionIn"]["required"]) == {"integration_id", "end_user_id"}
    bodies = {path: op["requestBody"]["content"]["application/json"]["schema"]
              for path, _, op in _operations(doc) if "requestBody" in op}
    assert bodies == {"/api/v1/integrations": {"$ref": "#/components/schemas/IntegrationIn"},
                      "/api/v1/connect-sessions": {"$ref": "#/components/schemas/ConnectSessionIn"},
                      "/api/v1/webhook": {"$ref": "#/components/schemas/WebhookIn"}}
    assert "client_secret" not in schemas["Integration"]["properties"]


def _codes(doc: dict[str, Any], path: str, method: str, status: str) -> set[str]:
    answer = doc["paths"][path][method]["responses"][status]
    answer = _resolve(doc, answer["$ref"]) if "$ref" in answer else answer
    overlay = answer["content"]["application/json"]["schema"]["allOf"][1]
    return set(overlay["properties"]["error"]["properties"]["code"]["enum"])


def test_the_documented_error_codes_are_the_ones_the_views_raise(doc: dict[str, Any]) -> None:
    connections, token = "/api/v1/connections", "/api/v1/connections/{connection_id}/token"
    assert _codes(doc, connections, "get", "400") == {"invalid_cursor", "invalid_limit", "invalid_status",
                                                      "bad_request"}
    assert _codes(doc, "/api/v1/connect-sessions", "post", "409") == {"integration_mismatch", "revoked"}
    for path, method in ((token, "get"), ("/api/v1/connections/{connection_id}/refresh", "post")):
        assert _codes(doc, path, method, "409") == {"needs_reauth", "revoked"}
        assert _codes(doc, path, method, "503") == {"refresh_pending"}
        assert "Retry-After" in doc["paths"][path][method]["responses"]["503"]["headers"]
    params = {p["name"] for p in doc["paths"][connections]["get"]["parameters"]}
    assert params == {"end_user_id", "integration_id", "status", "limit", "cursor"}
    assert _codes(doc, "/api/v1/webhook/deliveries/{delivery_id}/retry", "post", "409") == {"webhook_not_set"}
    assert _codes(doc, "/api/v1/webhook/deliveries", "get", "400") == {"invalid_cursor", "invalid_limit", "bad_request"}
    for path, method, operation_ in _operations(doc):
        if path.startswith("/api/v1") and path != "/api/v1/openapi.json":
            assert _codes(doc, path, method, "429") == {"rate_limited"}, (path, method)
            assert "Retry-After" in operation_["responses"]["429"]["headers"]
        if path.startswith(("/connect/", "/oauth/")):
            assert "text/html" in operation_["responses"]["429"]["content"], (path, method)


def test_every_schema_is_the_one_pydantic_generates(doc: dict[str, Any]) -> None:
    schemas_ = doc["components"]["schemas"]
    for name, schema in schemas_.items():
        model = getattr(schemas, name, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            mode = "validation" if name.endswith(("In", "Query")) else "serialization"
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
            generated.pop("$defs", None)
            assert schema == generated, name


@pytest.mark.parametrize("enum, column", [
    (ConnectionStatus, Connection.status), (AttemptStatus, ConnectAttempt.status), (EventType, Event.type),
    (ProviderKind, Integration.provider), (TokenAuthMethod, Integration.token_auth_method)])
def test_statuses_and_event_types_are_one_enum_for_the_database_the_api_and_the_document(
        doc: dict[str, Any], enum: Any, column: Any) -> None:
    values = [member.value for member in enum]
    assert doc["components"]["schemas"][enum.__name__]["enum"] == values
    assert column.type.enums == values
    assert column.type.length >= max(len(value) for value in values)


def test_a_new_route_is_one_decorated_view_and_its_models(memory_runtime: Runtime) -> None:
    class Widget(schemas.Answer):
        """A thing."""

        id: str

    app = create_app(runtime_=memory_runtime)
    extra = Blueprint("api_extra", __name__, url_prefix="/api/v1")

    @extra.get("/widgets/<widget_id>")
    @openapi.operation("getWidget", "widgets", {200: ok(Widget, "The widget")})
    def get_widget(widget_id: str) -> dict[str, str]:
        """One widget."""
        return {"id": widget_id}

    app.register_blueprint(extra)
    doc = document(app)
    item = doc["paths"]["/api/v1/widgets/{widget_id}"]
    assert item["parameters"] == [{"name": "widget_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert item["get"]["operationId"] == "getWidget" and item["get"]["summary"] == "One widget."
    assert item["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Widget"}
    assert doc["components"]["schemas"]["Widget"]["required"] == ["id"]


# --- the real answers match the documented schemas -------------------------------------

def _valid(doc: dict[str, Any], value: Any, schema: dict[str, Any]) -> bool:
    """A small JSON Schema check: type, enum, const, required, properties, items, anyOf, allOf, $ref.
    Objects with `required` are closed: a key the document does not name is drift."""
    if "$ref" in schema:
        schema = {**_resolve(doc, schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
    kind = schema.get("type")
    if kind and (not isinstance(value, TYPES[kind]) or (kind == "integer" and isinstance(value, bool))):
        return False
    if ("enum" in schema and value not in schema["enum"]) or ("const" in schema and value != schema["const"]):
        return False
    if not all(_valid(doc, value, s) for s in schema.get("allOf", [])):
        return False
    if "anyOf" in schema and not any(_valid(doc, value, s) for s in schema["anyOf"]):
        return False
    if isinstance(value, list) and "items" in schema:
        return all(_valid(doc, item, schema["items"]) for item in value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if "required" in schema and not (set(schema["required"]) <= value.keys() <= properties.keys()):
            return False
        return all(_valid(doc, v, properties[k]) for k, v in value.items() if k in properties)
    return True


@pytest.fixture
def tenant(app: Flask, memory_runtime: Runtime) -> dict[str, Any]:
    """A tenant with two integrations and, on the first, an active and a needs_reauth connection."""
    client = app.test_client()
    with memory_runtime.db.session() as session:
        owner, key = create_tenant(session, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    body = {"provider": "respondio", "client_id": "cid", "client_secret": "s3cr3t", "scopes": ["a"]}
    first, second = (client.post("/api/v1/integrations", json=body, headers=auth).get_json()["id"] for _ in "12")
    with memory_runtime.db.session() as session:
        rows = [Connection(tenant_id=owner.id, integration_id=first, end_user_id=f"user-{status}", scopes=["a"],
                           status=status, access_token_enc=memory_runtime.cipher.encrypt("at-secret"),
                           expires_at=utcnow() + timedelta(hours=1), last_refreshed_at=utcnow())
                for status in ("active", "needs_reauth")]
        session.add_all(rows)
        session.flush()
        record_event(session, rows[0], "created")
        record_event(session, rows[1], "needs_reauth", "invalid_grant")
    return {"auth": auth, "first": first, "second": second, "active": rows[0].id, "needs_reauth": rows[1].id}


def test_the_real_answers_match_the_document(app: Flask, doc: dict[str, Any], tenant: dict[str, Any],
                                            memory_runtime: Runtime) -> None:
    client, auth = app.test_client(), tenant["auth"]
    memory_runtime.celery = RecordingCelery()  # type: ignore[assignment]  # DELETE queues a revocation
    active, stuck, first, second = tenant["active"], tenant["needs_reauth"], tenant["first"], tenant["second"]
    body = {"provider": "sandbox", "client_id": "cid", "client_secret": "s3cr3t"}
    cases: list[tuple[str, str, str, int, dict[str, Any]]] = [
        ("post", "/api/v1/integrations", "/api/v1/integrations", 201, {"json": body}),
        ("post", "/api/v1/integrations", "/api/v1/integrations", 400, {"data": "nope"}),
        ("post", "/api/v1/integrations", "/api/v1/integrations", 422, {"json": {**body, "provider": "x"}}),
        ("post", "/api/v1/integrations", "/api/v1/integrations", 413,
         {"data": "x" * 300_000, "content_type": "application/json"}),
        ("get", "/api/v1/integrations", "/api/v1/integrations", 200, {}),
        ("get", "/api/v1/integrations", "/api/v1/integrations", 401, {"headers": {}}),
        ("get", "/api/v1/integrations/{integration_id}", f"/api/v1/integrations/{first}", 200, {}),
        ("get", "/api/v1/integrations/{integration_id}", "/api/v1/integrations/int_nope", 404, {}),
        ("post", "/api/v1/connect-sessions", "/api/v1/connect-sessions", 201,
         {"json": {"integration_id": first, "end_user_id": "u"}}),
        ("post", "/api/v1/connect-sessions", "/api/v1/connect-sessions", 409,
         {"json": {"integration_id": second, "end_user_id": "u", "connection_id": active}}),
        ("get", "/api/v1/connections", "/api/v1/connections?limit=1", 200, {}),
        ("get", "/api/v1/connections", "/api/v1/connections?status=gone", 400, {}),
        ("get", "/api/v1/connections/{connection_id}", f"/api/v1/connections/{active}", 200, {}),
        ("get", "/api/v1/connections/{connection_id}/token", f"/api/v1/connections/{active}/token", 200, {}),
        ("get", "/api/v1/connections/{connection_id}/token", f"/api/v1/connections/{stuck}/token", 409, {}),
        ("post", "/api/v1/connections/{connection_id}/refresh", f"/api/v1/connections/{stuck}/refresh", 409, {}),
        ("get", "/api/v1/connections/{connection_id}/events", f"/api/v1/connections/{stuck}/events", 200, {}),
        ("get", "/api/v1/connections/{connection_id}/events", f"/api/v1/connections/{stuck}/events?cursor=x", 400,
         {}),
        ("delete", "/api/v1/connections/{connection_id}", f"/api/v1/connections/{stuck}", 202, {}),
        ("delete", "/api/v1/connections/{connection_id}", "/api/v1/connections/conn_nope", 404, {}),
        ("get", "/api/v1/webhook", "/api/v1/webhook", 200, {}),
        ("put", "/api/v1/webhook", "/api/v1/webhook", 200, {"json": {"url": "https://hooks.example/in"}}),
        ("put", "/api/v1/webhook", "/api/v1/webhook", 422, {"json": {"url": "nope"}}),
        ("get", "/api/v1/webhook", "/api/v1/webhook", 200, {}),
        ("get", "/api/v1/webhook/deliveries", "/api/v1/webhook/deliveries", 200, {}),
        ("post", "/api/v1/webhook/deliveries/{delivery_id}/retry", "/api/v1/webhook/deliveries/whd_nope/retry",
         404, {}),
        ("get", "/readyz", "/readyz", 200, {}),
        ("get", "/connect/attempts/{attempt_id}", "/connect/attempts/att_nope", 404,
         {"headers": {"Accept": "application/json"}}),
    ]
    for method, template, url, status, kwargs in cases:
        kwargs = {"headers": auth, **kwargs}
        response = client.open(url, method=method.upper(), **kwargs)
        assert response.status_code == status, (method, url, response.get_data(as_text=True)[:200])
        answer = doc["paths"][template][method]["responses"][str(status)]
        answer = _resolve(doc, answer["$ref"]) if "$ref" in answer else answer
        schema = answer["content"]["application/json"]["schema"]
        assert _valid(doc, response.get_json(), schema), (method, url, response.get_json())
        for header in answer.get("headers", {}):
            assert header in response.headers, (method, url, header)
