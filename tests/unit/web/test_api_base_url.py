"""`api_base_url` on integrations: defaults by provider, given for oauth2, checked, and migrated."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from shared import migrate
from tests.unit.web.test_api import INTEGRATION, Api
from tests.unit.web.test_api import api as api  # noqa: F401 - the fixture


def test_respondio_and_sandbox_default_to_their_apis_and_oauth2_has_none(api: Api) -> None:  # noqa: F811
    respondio = api("POST", "/integrations", json=INTEGRATION).get_json()
    sandbox = api("POST", "/integrations", json={**INTEGRATION, "provider": "sandbox"}).get_json()
    oauth2 = api("POST", "/integrations", json={**INTEGRATION, "provider": "oauth2",
                                                "authorize_url": "https://idp.example/auth",
                                                "token_url": "https://idp.example/token"}).get_json()
    assert respondio["api_base_url"] == "https://api.respond.io/v2"
    assert sandbox["api_base_url"] == "http://127.0.0.1:8000/sandbox/api/v2"
    assert oauth2["api_base_url"] is None
    assert api("GET", f"/integrations/{respondio['id']}").get_json()["api_base_url"] == "https://api.respond.io/v2"


def test_a_given_api_base_url_wins_and_must_be_an_http_url(api: Api) -> None:  # noqa: F811
    given = api("POST", "/integrations", json={**INTEGRATION, "api_base_url": "https://eu.respond.io/v2"})
    assert given.get_json()["api_base_url"] == "https://eu.respond.io/v2"
    bad = api("POST", "/integrations", json={**INTEGRATION, "api_base_url": "ftp://x"})
    assert bad.status_code == 422 and bad.get_json()["error"]["details"][0]["field"] == "api_base_url"


def test_the_document_shows_api_base_url(api: Api) -> None:  # noqa: F811
    document = api("GET", "/openapi.json").get_json()
    assert "api_base_url" in document["components"]["schemas"]["Integration"]["properties"]
    assert "api_base_url" in document["components"]["schemas"]["IntegrationIn"]["properties"]


def test_the_migration_fills_in_existing_integrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url, "0001")
    engine = sa.create_engine(url)
    columns = ("id, tenant_id, provider, client_id, client_secret_enc, scopes, authorize_url, token_url, "
               "token_auth_method, pkce, extra_authorize_params, created_at")
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO tenants (id, name, api_key_hash, created_at) "
                                   "VALUES ('t', 't', 'h', '2026-01-01')"))
        for id_, provider, token_url in (("r", "respondio", "https://app.respond.io/oauth/token"),
                                         ("s", "sandbox", "http://svc:8000/sandbox/oauth/token"),
                                         ("o", "oauth2", "https://idp.example/token")):
            connection.execute(sa.text(f"INSERT INTO integrations ({columns}) VALUES (:id, 't', :provider, 'c', "
                                       "'x', '[]', 'https://a', :token_url, 'client_secret_basic', 1, '{}', "
                                       "'2026-01-01')"), {"id": id_, "provider": provider, "token_url": token_url})
    migrate.upgrade(url)
    with engine.connect() as connection:
        rows = dict(connection.execute(sa.text("SELECT id, api_base_url FROM integrations")).all())
    engine.dispose()
    assert rows == {"r": "https://api.respond.io/v2", "s": "http://svc:8000/sandbox/api/v2", "o": None}
