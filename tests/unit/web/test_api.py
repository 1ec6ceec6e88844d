"""The tenant API's answers to good and bad input (Flask test client, fakeredis, in-memory SQLite)."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.models import Connection
from shared.runtime import Runtime
from shared.tenants import create_tenant
from web import create_app


class Api:
    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client, self.key = client, key

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)


@pytest.fixture
def api(memory_runtime: Runtime) -> Iterator[Api]:
    app = create_app(runtime_=memory_runtime)
    with memory_runtime.db.session() as session:
        tenant, key = create_tenant(session, "acme")
    api = Api(app.test_client(), key)
    api.tenant_id = tenant.id  # type: ignore[attr-defined]
    api.runtime = memory_runtime  # type: ignore[attr-defined]
    yield api


INTEGRATION = {"provider": "respondio", "client_id": "cid", "client_secret": "s3cr3t-value", "scopes": ["a", "b"]}


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()["error"]
    assert body["code"] == code and body["message"]
    return body


def test_a_call_without_a_key_is_401(api: Api) -> None:
    _error(api.client.get("/api/v1/integrations"), 401, "unauthorized")
    _error(api("GET", "/integrations", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    _error(api("GET", "/integrations", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    _error(api("POST", "/integrations", data="provider=respondio", content_type="text/plain"), 400, "invalid_json")
    _error(api("POST", "/integrations", json=[1, 2]), 400, "invalid_json")


def test_a_deeply_nested_json_body_is_400_not_500(api: Api) -> None:
    for body in ("[" * 100_000 + "]" * 100_000, '{"a": ' * 20_000 + "1" + "}" * 20_000):
        _error(api("POST", "/integrations", data=body, content_type="application/json"), 400, "invalid_json")
        _error(api("POST", "/connect-sessions", data=body, content_type="application/json"), 400, "invalid_json")


def test_a_deeply_nested_cursor_is_400(api: Api) -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()
    _error(api("GET", f"/connections?cursor={cursor}"), 400, "invalid_cursor")


@pytest.mark.parametrize(("change", "field"), [
    ({"provider": "github"}, "provider"),
    ({"client_id": ""}, "client_id"),
    ({"scopes": ["has space"]}, "scopes"),
    ({"authorize_url": "ftp://x"}, "authorize_url"),
    ({"token_url": "not a url"}, "token_url"),
    ({"token_auth_method": "private_key_jwt"}, "token_auth_method"),
    ({"extra_authorize_params": {"state": "x"}}, "extra_authorize_params"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_integration_fields_are_422_naming_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    body = _error(api("POST", "/integrations", json={**INTEGRATION, **change}), 422, "invalid_fields")
    assert body["details"][0]["field"] == field


def test_a_missing_required_field_is_422(api: Api) -> None:
    body = {k: v for k, v in INTEGRATION.items() if k != "client_secret"}
    error = _error(api("POST", "/integrations", json=body), 422, "invalid_fields")
    assert error["details"][0]["field"] == "client_secret"


def test_a_generic_oauth2_integration_needs_its_urls(api: Api) -> None:
    body = _error(api("POST", "/integrations", json={**INTEGRATION, "provider": "oauth2"}), 422, "invalid_fields")
    assert {d["field"] for d in body["details"]} == {"authorize_url", "token_url"}
    created = api("POST", "/integrations", json={**INTEGRATION, "provider": "oauth2",
                                                 "authorize_url": "https://idp.example/auth",
                                                 "token_url": "https://idp.example/token"})
    assert created.status_code == 201


def test_respondio_uses_its_default_urls_unless_overridden_and_never_shows_the_secret(api: Api) -> None:
    created = api("POST", "/integrations", json=INTEGRATION)
    assert created.status_code == 201
    body = created.get_json()
    assert body["authorize_url"] == "https://app.respond.io/oauth/authorize"
    assert body["token_url"] == "https://app.respond.io/oauth/token"
    assert body["redirect_uri"] == "http://127.0.0.1:8000/oauth/callback"
    assert "s3cr3t-value" not in created.get_data(as_text=True)
    overridden = api("POST", "/integrations", json={**INTEGRATION, "token_url": "https://eu.respond.io/oauth/token"})
    assert overridden.get_json()["token_url"] == "https://eu.respond.io/oauth/token"
    assert overridden.get_json()["authorize_url"] == "https://app.respond.io/oauth/authorize"
    listed = api("GET", "/integrations").get_json()["data"]
    assert [i["id"] for i in listed] == [body["id"], overridden.get_json()["id"]]
    assert "s3cr3t-value" not in api("GET", f"/integrations/{body['id']}").get_data(as_text=True)


def test_unknown_ids_are_404(api: Api) -> None:
    _error(api("GET", "/integrations/int_nope"), 404, "not_found")
    _error(api("GET", "/connections/conn_nope"), 404, "not_found")
    _error(api("GET", "/connections/conn_nope/token"), 404, "not_found")
    _error(api("POST", "/connect-sessions", json={"integration_id": "int_nope", "end_user_id": "u"}), 404, "not_found")


def test_connect_session_validation(api: Api) -> None:
    integration = api("POST", "/integrations", json=INTEGRATION).get_json()
    _error(api("POST", "/connect-sessions", json={"integration_id": integration["id"]}), 422, "invalid_fields")
    _error(api("POST", "/connect-sessions", json={"integration_id": integration["id"], "end_user_id": "u",
                                                  "return_url": "javascript:alert(1)"}), 422, "invalid_fields")
    created = api("POST", "/connect-sessions", json={"integration_id": integration["id"], "end_user_id": "u"})
    assert created.status_code == 201
    body = created.get_json()
    assert body["connect_url"].startswith("http://127.0.0.1:8000/connect/") and body["expires_at"].endswith("Z")


def _connections(api: Api, count: int, **fields: Any) -> list[str]:
    integration = api("POST", "/integrations", json=INTEGRATION).get_json()
    with api.runtime.db.session() as session:  # type: ignore[attr-defined]
        rows = [Connection(tenant_id=api.tenant_id, integration_id=integration["id"],  # type: ignore[attr-defined]
                           end_user_id=f"user-{i}", scopes=[], **fields) for i in range(count)]
        session.add_all(rows)
    return [row.id for row in rows]


def test_connections_are_paged_with_a_cursor(api: Api) -> None:
    ids = _connections(api, 5)
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api("GET", "/connections", query_string=query).get_json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


def test_bad_list_parameters_are_400(api: Api) -> None:
    _error(api("GET", "/connections", query_string={"status": "weird"}), 400, "invalid_status")
    _error(api("GET", "/connections", query_string={"cursor": "!!!"}), 400, "invalid_cursor")
    _error(api("GET", "/connections", query_string={"limit": "ten"}), 400, "invalid_limit")


def test_the_token_of_a_connection_needing_reauth_is_409(api: Api) -> None:
    [connection_id] = _connections(api, 1, status="needs_reauth")
    _error(api("GET", f"/connections/{connection_id}/token"), 409, "needs_reauth")


def test_unknown_api_paths_and_methods_answer_json(api: Api) -> None:
    _error(api("GET", "/nothing-here"), 404, "not_found")
    response = api("DELETE", "/integrations")
    _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_a_cursor_with_a_naive_time_is_400(api: Api) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00", "conn_x"]).encode()).decode()
    _error(api("GET", "/connections", query_string={"cursor": cursor}), 400, "invalid_cursor")


@pytest.mark.parametrize("name", ["scope", "response_mode", "redirect_uri", "code_challenge"])
def test_extra_authorize_params_cannot_override_the_flow(api: Api, name: str) -> None:
    body = {**INTEGRATION, "extra_authorize_params": {name: "x", "prompt": "consent"}}
    assert name in _error(api("POST", "/integrations", json=body), 422, "invalid_fields")["message"]


def test_sandbox_integrations_need_the_sandbox_on(memory_runtime: Runtime) -> None:
    memory_runtime.settings = memory_runtime.settings.model_copy(update={"sandbox_provider": False})
    app = create_app(runtime_=memory_runtime)
    with memory_runtime.db.session() as session:
        _, key = create_tenant(session, "acme")
    response = Api(app.test_client(), key)("POST", "/integrations", json={**INTEGRATION, "provider": "sandbox"})
    assert _error(response, 422, "invalid_fields")["details"][0]["field"] == "provider"


def test_a_connections_events_are_paged_with_the_same_cursor(api: Api) -> None:
    from shared.tokens import record_event

    [connection_id] = _connections(api, 1)
    with api.runtime.db.session() as session:  # type: ignore[attr-defined]
        connection = session.get(Connection, connection_id)
        for type_ in ("created", "refreshed", "refresh_failed", "recovered", "refreshed"):
            record_event(session, connection, type_)
    seen, cursor, pages = [], None, 0
    while pages < 10:
        response = api("GET", f"/connections/{connection_id}/events",
                       query_string={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        page = response.get_json()
        assert len(page["data"]) <= 2
        seen += [event["id"] for event in page["data"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not cursor:
            break
    everything = api("GET", f"/connections/{connection_id}/events").get_json()
    assert everything["next_cursor"] is None
    assert seen == [event["id"] for event in everything["data"]] and len(seen) == 5 and pages == 3
    _error(api("GET", f"/connections/{connection_id}/events", query_string={"cursor": "!!!"}), 400, "invalid_cursor")
    _error(api("GET", f"/connections/{connection_id}/events", query_string={"limit": "x"}), 400, "invalid_limit")


@pytest.mark.parametrize("field", ["authorize_url", "token_url", "revoke_url", "issuer"])
def test_a_sandbox_integration_always_uses_the_sandbox_urls(api: Api, field: str) -> None:
    body = {**INTEGRATION, "provider": "sandbox", field: "https://idp.example/elsewhere"}
    assert _error(api("POST", "/integrations", json=body), 422, "invalid_fields")["details"][0]["field"] == field
    created = api("POST", "/integrations", json={**INTEGRATION, "provider": "sandbox"})
    assert created.status_code == 201
    assert created.get_json()["token_url"] == "http://127.0.0.1:8000/sandbox/oauth/token"
