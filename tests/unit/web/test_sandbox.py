"""The sandbox provider: a strict fake of respond.io's OAuth 2.0 server, over fakeredis."""
from __future__ import annotations

import base64
import threading
import time
from urllib.parse import parse_qs, quote, urlsplit

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.config import load_settings
from shared.crypto import Cipher, new_fernet_key
from shared.db import Database
from shared.pkce import new_verifier, s256_challenge
from shared.runtime import Runtime
from web import sandbox

BASE = "http://sandbox.test"
REDIRECT = f"{BASE}/oauth/callback"


@pytest.fixture()
def runtime() -> Runtime:
    key = new_fernet_key()
    settings = load_settings(secret_key="x" * 32, token_encryption_keys=key, sandbox_provider=True,
                             database_url="sqlite://", public_base_url=BASE)
    return Runtime(settings=settings, db=Database("sqlite://"), redis=fakeredis.FakeRedis(), cipher=Cipher([key]))


@pytest.fixture()
def app(runtime: Runtime) -> Flask:
    app = Flask("web")  # the web package's root, so its templates are found
    app.extensions["runtime"] = runtime
    app.register_blueprint(sandbox.bp)
    return app


@pytest.fixture()
def web(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def creds(web: FlaskClient) -> dict:
    response = web.post("/sandbox/clients", json={})
    assert response.status_code == 201
    return response.get_json()


def basic(creds: dict) -> dict[str, str]:
    pair = f"{quote(creds['client_id'], safe='')}:{quote(creds['client_secret'], safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def authorize_params(creds: dict, verifier: str, **extra: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": creds["client_id"], "redirect_uri": REDIRECT,
            "scope": "contacts messages", "state": "st4te", "code_challenge": s256_challenge(verifier),
            "code_challenge_method": "S256", **extra}


def get_code(web: FlaskClient, creds: dict, verifier: str, workspace: str = "Acme") -> str:
    response = web.post("/sandbox/oauth/authorize",
                        data={**authorize_params(creds, verifier), "workspace": workspace, "decision": "approve"})
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.location).query)
    assert query["state"] == ["st4te"] and query["iss"] == [f"{BASE}/sandbox"]
    return query["code"][0]


def exchange(web: FlaskClient, creds: dict, code: str, verifier: str, **form: str):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
            **form}
    return web.post("/sandbox/oauth/token", data=data, headers=basic(creds))


def refresh(web: FlaskClient, creds: dict, token: str):
    return web.post("/sandbox/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token},
                    headers=basic(creds))


def introspect(web: FlaskClient, creds: dict, token: str) -> dict:
    return web.post("/sandbox/oauth/introspect", data={"token": token}, headers=basic(creds)).get_json()


@pytest.fixture()
def tokens(web: FlaskClient, creds: dict) -> dict:
    verifier = new_verifier()
    response = exchange(web, creds, get_code(web, creds, verifier), verifier)
    assert response.status_code == 200
    return response.get_json()


def knobs(web: FlaskClient, creds: dict, **values) -> None:
    assert web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", json=values).status_code == 200


def stats(web: FlaskClient, creds: dict) -> dict:
    return web.get(f"/sandbox/admin/clients/{creds['client_id']}/stats").get_json()


def test_issuer_and_default_redirect_uri(runtime: Runtime, creds: dict) -> None:
    assert sandbox.issuer_url(runtime.settings) == f"{BASE}/sandbox"
    assert creds["redirect_uris"] == [REDIRECT] and creds["client_secret"]
    assert creds["client_secret"].encode() not in b"".join(runtime.redis.hvals(f"sandbox:client:{creds['client_id']}"))


def test_register_client_validates(web: FlaskClient, runtime: Runtime) -> None:
    assert web.post("/sandbox/clients", json={"redirect_uris": ["not a url"]}).status_code == 400
    assert web.post("/sandbox/clients", json={"access_token_ttl": 0}).get_json()["error"] == "invalid_client_metadata"
    client = sandbox.register_client(runtime.redis, ["https://a.test/cb"], access_token_ttl=5)
    assert client["redirect_uris"] == ["https://a.test/cb"]


def test_consent_page(web: FlaskClient, creds: dict) -> None:
    response = web.get("/sandbox/oauth/authorize", query_string=authorize_params(creds, new_verifier()))
    assert response.status_code == 200
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = response.get_data(as_text=True)
    assert creds["client_id"] in html and "contacts" in html and "messages" in html
    assert 'value="Demo workspace"' in html
    assert 'name="decision" value="approve"' in html and 'name="decision" value="deny"' in html
    assert "http://" not in html.replace(REDIRECT, "")  # no third-party resources


def test_full_code_flow(web: FlaskClient, creds: dict) -> None:
    verifier = new_verifier()
    response = exchange(web, creds, get_code(web, creds, verifier, workspace="Acme"), verifier)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "contacts messages"
    info = introspect(web, creds, body["access_token"])
    assert info["active"] and info["token_type"] == "access_token" and info["workspace"] == "Acme"
    assert info["client_id"] == creds["client_id"] and info["exp"] > time.time() + 3500
    assert introspect(web, creds, body["refresh_token"])["token_type"] == "refresh_token"
    assert stats(web, creds)["token_requests"]["authorization_code"] == 1


def test_deny_redirects_access_denied(web: FlaskClient, creds: dict) -> None:
    response = web.post("/sandbox/oauth/authorize",
                        data={**authorize_params(creds, new_verifier()), "decision": "deny"})
    assert response.status_code == 302 and response.location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(response.location).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st4te"] and "error_description" in query
    assert query["iss"] == [f"{BASE}/sandbox"]


@pytest.mark.parametrize("override", [{"redirect_uri": "https://evil.test/cb"}, {"client_id": "nobody"},
                                      {"redirect_uri": REDIRECT + "/"}])
def test_bad_client_or_redirect_uri_is_a_page_not_a_redirect(web: FlaskClient, creds: dict, override) -> None:
    params = authorize_params(creds, new_verifier(), **override)
    for response in (web.get("/sandbox/oauth/authorize", query_string=params),
                     web.post("/sandbox/oauth/authorize", data={**params, "decision": "approve"})):
        assert response.status_code == 400 and "Location" not in response.headers
        assert "text/html" in response.content_type


@pytest.mark.parametrize("override, error", [({"response_type": "token"}, "unsupported_response_type"),
                                             ({"code_challenge_method": "plain"}, "invalid_request"),
                                             ({"code_challenge": ""}, "invalid_request")])
def test_authorize_errors_redirect(web: FlaskClient, creds: dict, override, error: str) -> None:
    response = web.get("/sandbox/oauth/authorize", query_string=authorize_params(creds, new_verifier(), **override))
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.location).query)["error"] == [error]


def test_code_is_single_use_and_replay_revokes_the_grant(web: FlaskClient, creds: dict) -> None:
    verifier = new_verifier()
    code = get_code(web, creds, verifier)
    first = exchange(web, creds, code, verifier).get_json()
    again = exchange(web, creds, code, verifier)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    assert introspect(web, creds, first["access_token"]) == {"active": False}
    assert refresh(web, creds, first["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert stats(web, creds)["grants_revoked"] == 1


def test_code_expires(web: FlaskClient, creds: dict, runtime: Runtime) -> None:
    verifier = new_verifier()
    code = get_code(web, creds, verifier)
    (key,) = runtime.redis.keys("sandbox:code:*")
    assert 0 < runtime.redis.ttl(key) <= 60
    runtime.redis.pexpire(key, 1)
    time.sleep(0.01)
    assert exchange(web, creds, code, verifier).get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize("form", [{"code_verifier": new_verifier()}, {"redirect_uri": REDIRECT + "?x=1"}])
def test_wrong_verifier_or_redirect_uri(web: FlaskClient, creds: dict, form: dict) -> None:
    verifier = new_verifier()
    response = exchange(web, creds, get_code(web, creds, verifier), verifier, **form)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_code_of_another_client(web: FlaskClient, creds: dict) -> None:
    other = web.post("/sandbox/clients", json={}).get_json()
    verifier = new_verifier()
    assert exchange(web, other, get_code(web, creds, verifier), verifier).get_json()["error"] == "invalid_grant"


def test_client_secret_post(web: FlaskClient, creds: dict) -> None:
    verifier = new_verifier()
    data = {"grant_type": "authorization_code", "code": get_code(web, creds, verifier), "redirect_uri": REDIRECT,
            "code_verifier": verifier, "client_id": creds["client_id"], "client_secret": creds["client_secret"]}
    assert web.post("/sandbox/oauth/token", data=data).status_code == 200


@pytest.mark.parametrize("headers, form", [
    ({}, {}),
    ({"Authorization": "Basic " + base64.b64encode(b"nobody:secret").decode()}, {}),
    ({}, {"client_id": "nobody", "client_secret": "x"}),
])
def test_bad_client_is_401(web: FlaskClient, creds: dict, headers: dict, form: dict) -> None:
    response = web.post("/sandbox/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "r", **form},
                        headers=headers)
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"


def test_wrong_secret_is_401(web: FlaskClient, creds: dict) -> None:
    response = web.post("/sandbox/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "r"},
                        headers=basic({**creds, "client_secret": "wrong"}))
    assert response.status_code == 401


def test_unsupported_grant_type(web: FlaskClient, creds: dict) -> None:
    response = web.post("/sandbox/oauth/token", data={"grant_type": "password"}, headers=basic(creds))
    assert response.status_code == 400 and response.get_json()["error"] == "unsupported_grant_type"


def test_refresh_rotates(web: FlaskClient, creds: dict, tokens: dict) -> None:
    response = refresh(web, creds, tokens["refresh_token"])
    assert response.status_code == 200
    fresh = response.get_json()
    assert fresh["refresh_token"] != tokens["refresh_token"] and fresh["scope"] == "contacts messages"
    assert introspect(web, creds, tokens["refresh_token"]) == {"active": False}
    assert introspect(web, creds, fresh["access_token"])["active"]
    assert refresh(web, creds, fresh["refresh_token"]).status_code == 200
    assert stats(web, creds)["refresh_success"] == 2


def test_reuse_of_spent_refresh_token_revokes_the_grant(web: FlaskClient, creds: dict, tokens: dict) -> None:
    fresh = refresh(web, creds, tokens["refresh_token"]).get_json()
    reused = refresh(web, creds, tokens["refresh_token"])
    assert reused.status_code == 400 and reused.get_json()["error"] == "invalid_grant"
    for token in (fresh["access_token"], fresh["refresh_token"], tokens["access_token"]):
        assert introspect(web, creds, token) == {"active": False}
    assert refresh(web, creds, fresh["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert stats(web, creds)["grants_revoked"] == 1


def test_concurrent_refreshes_exactly_one_wins(app: Flask, web: FlaskClient, creds: dict, tokens: dict) -> None:
    barrier, statuses = threading.Barrier(8), []

    def attempt() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(refresh(client, creds, tokens["refresh_token"]).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * 7
    counts = stats(web, creds)
    assert counts["refresh_success"] == 1 and counts["grants_revoked"] == 1


@pytest.mark.parametrize("failure, status, error", [("500", 500, "server_error"), ("502", 502, None),
                                                    ("503", 503, None), ("invalid_grant", 400, "invalid_grant"),
                                                    ("unauthorized_client", 400, "unauthorized_client")])
def test_scripted_failures_do_not_spend_the_refresh_token(web: FlaskClient, creds: dict, tokens: dict,
                                                          failure: str, status: int, error: str | None) -> None:
    knobs(web, creds, fail=[failure])
    response = refresh(web, creds, tokens["refresh_token"])
    assert response.status_code == status
    assert response.get_json()["error"] == (error or "temporarily_unavailable")
    assert refresh(web, creds, tokens["refresh_token"]).status_code == 200


def test_scripted_429_and_timeout(web: FlaskClient, creds: dict, tokens: dict) -> None:
    knobs(web, creds, fail=["429", "timeout"], retry_after=7, timeout_seconds=0.05)
    limited = refresh(web, creds, tokens["refresh_token"])
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    started = time.monotonic()
    assert refresh(web, creds, tokens["refresh_token"]).status_code == 504
    assert time.monotonic() - started >= 0.05
    assert refresh(web, creds, tokens["refresh_token"]).status_code == 200
    counts = stats(web, creds)
    assert counts["failures_injected"] == 2 and counts["token_requests"]["refresh_token"] == 3


def test_scripted_failure_applies_to_code_exchange_before_spending_the_code(web: FlaskClient, creds: dict) -> None:
    knobs(web, creds, fail=["503"])
    verifier = new_verifier()
    code = get_code(web, creds, verifier)
    assert exchange(web, creds, code, verifier).status_code == 503
    assert exchange(web, creds, code, verifier).status_code == 200


def test_knobs_roundtrip_ttl_and_latency(web: FlaskClient, creds: dict, tokens: dict) -> None:
    path = f"/sandbox/admin/clients/{creds['client_id']}/knobs"
    knobs(web, creds, latency_ms=20, access_token_ttl=90, fail=["500"])
    knobs(web, creds, latency_ms=20, access_token_ttl=90)  # PUT replaces, the fail list too
    assert web.get(path).get_json() == {"latency_ms": 20, "access_token_ttl": 90, "fail": [], "retry_after": 1,
                                        "timeout_seconds": 30.0, "rotate_refresh_tokens": True,
                                        "api_rate_limit": 100, "api_rate_window": 1, "expire_access_tokens": 0,
                                        "api_fail": []}
    started = time.monotonic()
    assert refresh(web, creds, tokens["refresh_token"]).get_json()["expires_in"] == 90
    assert time.monotonic() - started >= 0.02


def test_a_provider_that_does_not_rotate_keeps_the_refresh_token(web: FlaskClient, creds: dict,
                                                                   tokens: dict) -> None:
    knobs(web, creds, rotate_refresh_tokens=False)
    first = refresh(web, creds, tokens["refresh_token"]).get_json()
    assert "refresh_token" not in first and first["access_token"]
    second = refresh(web, creds, tokens["refresh_token"])
    assert second.status_code == 200 and second.get_json()["access_token"] != first["access_token"]
    assert introspect(web, creds, tokens["refresh_token"])["active"]
    assert stats(web, creds)["grants_revoked"] == 0


def test_registered_ttl_wins_over_knob(web: FlaskClient, runtime: Runtime) -> None:
    creds = sandbox.register_client(runtime.redis, [REDIRECT], access_token_ttl=42)
    knobs(web, creds, access_token_ttl=90)
    verifier = new_verifier()
    assert exchange(web, creds, get_code(web, creds, verifier), verifier).get_json()["expires_in"] == 42


@pytest.mark.parametrize("body", [{"fail": ["418"]}, {"latency_ms": -1}, {"latency_ms": "5"}, {"bogus": 1},
                                  {"access_token_ttl": True}, {"timeout_seconds": "x"}, [],
                                  {"rotate_refresh_tokens": "no"}, {"latency_ms": 30_001},
                                  {"timeout_seconds": 61}, {"retry_after": 3601},
                                  {"access_token_ttl": 30 * 86400 + 1}, {"fail": ["500"] * 1001},
                                  {"fail": '[' * 100_000 + ']' * 100_000}])
def test_knobs_are_validated(web: FlaskClient, creds: dict, body) -> None:
    response = web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", json=body)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_knobs_at_their_caps_are_accepted(web: FlaskClient, creds: dict) -> None:
    body = {"latency_ms": 30_000, "timeout_seconds": 60, "retry_after": 3600, "access_token_ttl": 30 * 86400,
            "fail": ["500"] * 1000}
    assert web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", json=body).status_code == 200


def test_a_deeply_nested_knobs_body_is_400(web: FlaskClient, creds: dict) -> None:
    body = '{"fail": ' * 100_000 + "1" + "}" * 100_000
    response = web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", data=body,
                       content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    response = web.post("/sandbox/clients", data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_client_metadata"


def test_knobs_of_unknown_client(web: FlaskClient) -> None:
    assert web.get("/sandbox/admin/clients/nobody/knobs").status_code == 404


def test_revoke_access_token_only(web: FlaskClient, creds: dict, tokens: dict) -> None:
    response = web.post("/sandbox/oauth/revoke", data={"token": tokens["access_token"],
                                                       "token_type_hint": "access_token"}, headers=basic(creds))
    assert response.status_code == 200
    assert introspect(web, creds, tokens["access_token"]) == {"active": False}
    assert introspect(web, creds, tokens["refresh_token"])["active"]


def test_revoke_refresh_token_revokes_the_grant(web: FlaskClient, creds: dict, tokens: dict) -> None:
    response = web.post("/sandbox/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=basic(creds))
    assert response.status_code == 200
    assert introspect(web, creds, tokens["access_token"]) == {"active": False}
    assert refresh(web, creds, tokens["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert web.post("/sandbox/oauth/revoke", data={"token": "unknown"}, headers=basic(creds)).status_code == 200
    counts = stats(web, creds)
    assert counts["revocations"] == 2 and counts["grants_revoked"] == 1


def test_revoke_and_introspect_need_client_auth(web: FlaskClient, creds: dict, tokens: dict) -> None:
    for path in ("/sandbox/oauth/revoke", "/sandbox/oauth/introspect"):
        assert web.post(path, data={"token": tokens["access_token"]}).status_code == 401


def test_other_clients_tokens_are_inactive_and_not_revocable(web: FlaskClient, creds: dict, tokens: dict) -> None:
    other = web.post("/sandbox/clients", json={}).get_json()
    assert introspect(web, other, tokens["access_token"]) == {"active": False}
    web.post("/sandbox/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=basic(other))
    assert introspect(web, creds, tokens["access_token"])["active"]


def test_all_state_is_under_the_sandbox_prefix(runtime: Runtime, tokens: dict) -> None:
    keys = runtime.redis.keys("*")
    assert keys and all(key.startswith(b"sandbox:") for key in keys)
    assert not any(tokens["refresh_token"].encode() in key for key in keys)
