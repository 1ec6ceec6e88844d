"""Authorize URLs and default endpoints for each provider kind."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from shared.providers import RESPONDIO_AUTHORIZE_URL, RESPONDIO_TOKEN_URL, build_authorize_url, default_urls


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_respondio_defaults_to_its_published_urls() -> None:
    urls = default_urls("respondio", "http://svc")
    assert urls["authorize_url"] == "https://app.respond.io/oauth/authorize" == RESPONDIO_AUTHORIZE_URL
    assert urls["token_url"] == "https://app.respond.io/oauth/token" == RESPONDIO_TOKEN_URL


def test_sandbox_lives_under_the_public_base_url() -> None:
    urls = default_urls("sandbox", "http://127.0.0.1:8000")
    assert urls == {
        "authorize_url": "http://127.0.0.1:8000/sandbox/oauth/authorize",
        "token_url": "http://127.0.0.1:8000/sandbox/oauth/token",
        "revoke_url": "http://127.0.0.1:8000/sandbox/oauth/revoke",
        "issuer": "http://127.0.0.1:8000/sandbox",
    }


def test_generic_oauth2_has_no_defaults() -> None:
    assert default_urls("oauth2", "http://svc") == {}


def test_the_authorize_url_carries_the_flow_parameters() -> None:
    url = build_authorize_url(RESPONDIO_AUTHORIZE_URL, client_id="cid", redirect_uri="http://svc/oauth/callback",
                              scopes=["contact:read", "message:write"], state="st", code_challenge="ch")
    assert url.startswith("https://app.respond.io/oauth/authorize?")
    assert _query(url) == {
        "response_type": ["code"], "client_id": ["cid"], "redirect_uri": ["http://svc/oauth/callback"],
        "state": ["st"], "scope": ["contact:read message:write"], "code_challenge": ["ch"],
        "code_challenge_method": ["S256"],
    }


def test_an_oauth2_authorize_url_keeps_its_query_and_extra_params() -> None:
    url = build_authorize_url("https://idp.example/authorize?tenant=t1", client_id="cid", redirect_uri="http://svc/cb",
                              scopes=[], state="st", code_challenge=None,
                              extra_params={"prompt": "consent", "access_type": "offline"})
    query = _query(url)
    assert query["tenant"] == ["t1"] and query["prompt"] == ["consent"] and query["access_type"] == ["offline"]
    assert "scope" not in query and "code_challenge" not in query
