"""Rate limits with the Flask test client over fakeredis: per client address on the browser
flow, per tenant on the API, 429 with Retry-After, and open when Redis is gone."""
from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from flask import Flask

from shared.crypto import Cipher
from shared.db import Database
from shared.models import Base
from shared.runtime import Runtime
from shared.tenants import create_tenant
from tests.conftest import make_settings
from web import create_app


def limited_app(server: fakeredis.FakeServer | None = None, **overrides: Any) -> tuple[Flask, Runtime]:
    settings = make_settings(**{"browser_rate_limit": "3/hour", "api_rate_limit": "4/hour", **overrides})
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    rt = Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(server=server or fakeredis.FakeServer()),
                 cipher=Cipher(settings.encryption_keys))
    return create_app(runtime_=rt), rt


def api_key(rt: Runtime, name: str) -> dict[str, str]:
    with rt.db.session() as session:
        _, key = create_tenant(session, name)
    return {"Authorization": f"Bearer {key}"}


def test_the_browser_flow_is_limited_per_client_address() -> None:
    app, _ = limited_app()
    client = app.test_client()
    paths = ["/connect/nope", "/oauth/callback?state=x", "/connect/attempts/att_nope"]
    assert [client.get(path).status_code for path in paths] == [404, 400, 404]  # one budget for the three

    refused = client.get("/connect/nope")
    assert refused.status_code == 429
    assert refused.mimetype == "text/html"
    assert "Too many requests" in refused.get_data(as_text=True)
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["Referrer-Policy"] == "no-referrer"
    other = client.get("/connect/nope", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 404
    assert client.get("/healthz").status_code == 200  # operations are not limited


def test_the_api_is_limited_per_tenant_and_answers_json() -> None:
    app, rt = limited_app()
    client = app.test_client()
    first, second = api_key(rt, "first"), api_key(rt, "second")
    for _ in range(4):
        assert client.get("/api/v1/integrations", headers=first).status_code == 200
    refused = client.get("/api/v1/connections", headers=first)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Another tenant at the same address has a budget of its own; the document is not limited.
    assert client.get("/api/v1/integrations", headers=second).status_code == 200
    assert [client.get("/api/v1/openapi.json").status_code for _ in range(6)] == [200] * 6


def test_a_missing_or_bad_key_still_gets_its_401_and_is_counted_by_address() -> None:
    app, rt = limited_app()
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}, {}):
        response = client.get("/api/v1/integrations", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
    guessing = client.get("/api/v1/integrations", headers={"Authorization": "Bearer guess"})
    assert guessing.status_code == 429
    assert guessing.get_json()["error"]["code"] == "rate_limited"
    assert client.get("/api/v1/integrations", headers=api_key(rt, "acme")).status_code == 200


@pytest.mark.parametrize("proxies, believed", [(0, False), (1, True)])
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(proxies: int, believed: bool) -> None:
    app, _ = limited_app(trusted_proxy_count=proxies)
    client = app.test_client()
    answers = [client.get("/connect/nope", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
               for n in range(5)]
    assert answers == ([404] * 5 if believed else [404, 404, 404, 429, 429])


def test_the_limits_fail_open_when_redis_is_down() -> None:
    server = fakeredis.FakeServer()
    app, rt = limited_app(server)
    client = app.test_client()
    headers = api_key(rt, "acme")
    server.connected = False
    for _ in range(8):
        assert client.get("/api/v1/integrations", headers=headers).status_code == 200
        assert client.get("/connect/nope").status_code == 404


def test_a_bad_limit_stops_the_program_with_one_line() -> None:
    with pytest.raises(SystemExit) as stopped:
        make_settings(api_rate_limit="lots")
    assert str(stopped.value).startswith("configuration error: API_RATE_LIMIT:")
