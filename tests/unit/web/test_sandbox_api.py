"""The sandbox's respond.io-like API, /sandbox/api/v2, over fakeredis."""
from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.pkce import new_verifier
from shared.runtime import Runtime
from tests.unit.web.test_sandbox import exchange, get_code, knobs, refresh, stats
from tests.unit.web.test_sandbox import runtime as runtime  # noqa: F401 - the fixture
from web import sandbox, sandbox_api

API = "/sandbox/api/v2"


@pytest.fixture()
def web(runtime: Runtime) -> FlaskClient:  # noqa: F811 - the imported fixture
    app = Flask("web")
    app.extensions["runtime"] = runtime
    app.register_blueprint(sandbox.bp)
    app.register_blueprint(sandbox_api.bp)
    return app.test_client()


@pytest.fixture()
def creds(web: FlaskClient) -> dict:
    response = web.post("/sandbox/clients", json={})
    assert response.status_code == 201
    return response.get_json()


def grant(web: FlaskClient, creds: dict, workspace: str = "Acme") -> dict:
    verifier = new_verifier()
    response = exchange(web, creds, get_code(web, creds, verifier, workspace), verifier)
    assert response.status_code == 200
    return response.get_json()


@pytest.fixture()
def tokens(web: FlaskClient, creds: dict) -> dict:
    return grant(web, creds)


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_only_the_sandboxs_own_access_tokens_are_accepted(web: FlaskClient, tokens: dict) -> None:
    assert web.get(f"{API}/space/channel").status_code == 401
    answer = web.get(f"{API}/space/channel", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert answer.get_json() == {"code": 401, "message": "the access token is unknown, expired or revoked"}
    assert web.get(f"{API}/space/channel", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
                   ).status_code == 401
    assert web.get(f"{API}/space/channel", headers=bearer(tokens)).status_code == 200


def test_a_revoked_grant_or_a_replaced_token_answers_401(web: FlaskClient, creds: dict, tokens: dict) -> None:
    newer = refresh(web, creds, tokens["refresh_token"]).get_json()
    assert web.get(f"{API}/space/user", headers=bearer(newer)).status_code == 200
    refresh(web, creds, tokens["refresh_token"])  # reuse of a spent refresh token revokes the grant
    assert web.get(f"{API}/space/user", headers=bearer(newer)).status_code == 401


def test_the_expire_knob_expires_a_token_early_for_good(web: FlaskClient, creds: dict, tokens: dict) -> None:
    knobs(web, creds, expire_access_tokens=1)
    assert web.get(f"{API}/space/channel", headers=bearer(tokens)).get_json()["message"] == "the access token expired"
    assert web.get(f"{API}/space/channel", headers=bearer(tokens)).status_code == 401
    newer = refresh(web, creds, tokens["refresh_token"]).get_json()
    assert web.get(f"{API}/space/channel", headers=bearer(newer)).status_code == 200
    assert stats(web, creds)["api_tokens_expired"] == 1


def test_each_organization_has_its_rate_limit(web: FlaskClient, creds: dict, tokens: dict) -> None:
    knobs(web, creds, api_rate_limit=2, api_rate_window=60)
    other = grant(web, creds, workspace="Other org")
    answers = [web.get(f"{API}/space/user", headers=bearer(tokens)) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 60
    assert web.get(f"{API}/space/user", headers=bearer(other)).status_code == 200
    assert stats(web, creds)["api_rate_limited"] == 1


def test_scripted_failures_answer_before_the_call(web: FlaskClient, creds: dict, tokens: dict) -> None:
    knobs(web, creds, api_fail=["503"])
    assert web.post(f"{API}/contact/email:a@b.test", json={}, headers=bearer(tokens)).status_code == 503
    assert web.get(f"{API}/contact/email:a@b.test", headers=bearer(tokens)).status_code == 404
    assert web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", json={"api_fail": ["404"]}).status_code == 400


def test_contacts_by_identifier(web: FlaskClient, tokens: dict) -> None:
    headers = bearer(tokens)
    created = web.post(f"{API}/contact/email:ann@example.test", json={"firstName": "Ann"}, headers=headers)
    assert created.status_code == 200
    contact = created.get_json()
    assert contact["email"] == "ann@example.test" and contact["firstName"] == "Ann" and contact["id"] == 1
    assert web.post(f"{API}/contact/email:ann@example.test", json={}, headers=headers).status_code == 409
    updated = web.put(f"{API}/contact/id:1", json={"phone": "+60123456789", "lastName": "Lee"}, headers=headers)
    assert updated.get_json()["lastName"] == "Lee"
    assert web.get(f"{API}/contact/phone:+60123456789", headers=headers).get_json()["firstName"] == "Ann"
    assert web.get(f"{API}/contact/email:ann@example.test", headers=headers).get_json()["id"] == 1
    assert web.get(f"{API}/contact/id:2", headers=headers).status_code == 404
    assert web.get(f"{API}/contact/name:ann", headers=headers).status_code == 400
    assert web.post(f"{API}/contact/id:5", json={}, headers=headers).status_code == 400
    assert web.post(f"{API}/contact/phone:+1555000", json={"email": "ann@example.test"},
                    headers=headers).status_code == 409
    assert web.put(f"{API}/contact/id:1", json={"nickname": "A"}, headers=headers).status_code == 400


def test_contacts_belong_to_their_organization(web: FlaskClient, creds: dict, tokens: dict) -> None:
    web.post(f"{API}/contact/email:ann@example.test", json={}, headers=bearer(tokens))
    other = grant(web, creds, workspace="Other org")
    assert web.get(f"{API}/contact/id:1", headers=bearer(other)).status_code == 404


def test_contacts_list_follows_the_cursor(web: FlaskClient, tokens: dict) -> None:
    headers = bearer(tokens)
    for n in range(5):
        web.post(f"{API}/contact/email:c{n}@example.test", json={"firstName": f"C{n}"}, headers=headers)
    seen, url = [], f"{API}/contact/list?limit=2"
    while url:
        page = web.post(url, json={"search": ""}, headers=headers).get_json()
        seen += [contact["email"] for contact in page["items"]]
        url = page["pagination"]["next"]
    assert seen == [f"c{n}@example.test" for n in range(5)]
    found = web.post(f"{API}/contact/list", json={"search": "c3"}, headers=headers).get_json()
    assert [contact["firstName"] for contact in found["items"]] == ["C3"]
    assert web.post(f"{API}/contact/list?cursorId=x", json={}, headers=headers).status_code == 400


def test_messages_channels_and_users(web: FlaskClient, tokens: dict) -> None:
    headers = bearer(tokens)
    channels = web.get(f"{API}/space/channel", headers=headers).get_json()["items"]
    users = web.get(f"{API}/space/user?limit=2", headers=headers).get_json()
    assert [channel["source"] for channel in channels] == ["whatsapp", "facebook", "email"]
    assert len(users["items"]) == 2 and "cursorId=2" in users["pagination"]["next"]
    message = {"channelId": channels[0]["id"], "message": {"type": "text", "text": "hello"}}
    assert web.post(f"{API}/contact/email:z@example.test/message", json=message, headers=headers).status_code == 404
    web.post(f"{API}/contact/email:z@example.test", json={}, headers=headers)
    sent = web.post(f"{API}/contact/email:z@example.test/message", json=message, headers=headers).get_json()
    assert sent == {"contactId": 1, "messageId": 1}
    bad = {"channelId": 99, "message": {"type": "text", "text": "hello"}}
    assert web.post(f"{API}/contact/id:1/message", json=bad, headers=headers).status_code == 400
    assert web.post(f"{API}/contact/id:1/message", json={"message": {"type": "text", "text": ""}},
                    headers=headers).status_code == 400


def test_unknown_paths_answer_json(web: FlaskClient, tokens: dict) -> None:
    answer = web.delete(f"{API}/space/workspace", headers=bearer(tokens))
    assert answer.status_code == 404 and answer.get_json() == {"code": 404, "message": "no such endpoint"}
    assert web.get(f"{API}/space/workspace").status_code == 401


@pytest.mark.parametrize("knobs_", [{"api_rate_window": 3601}, {"api_rate_limit": 0}, {"expire_access_tokens": -1},
                                    {"expire_access_tokens": True}, {"api_fail": "500"}, {"api_fail": ["500"] * 1001}])
def test_the_api_knobs_are_capped(web: FlaskClient, creds: dict, knobs_: dict) -> None:
    answer = web.put(f"/sandbox/admin/clients/{creds['client_id']}/knobs", json=knobs_)
    assert answer.status_code == 400 and answer.get_json()["error"] == "invalid_request"
