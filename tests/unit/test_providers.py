"""Provider kinds, authorize URLs, and the token-endpoint client against a local HTTP server."""
from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.egress import Rules
from shared.providers import (
    RESPONDIO_AUTHORIZE_URL,
    RESPONDIO_TOKEN_URL,
    OAuthClient,
    ProviderError,
    TokenSet,
    build_authorize_url,
    default_urls,
    refresh,
    retry_after_seconds,
)

LOOPBACK = Rules(allow_private=True, require_https=False)


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


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds("-5") == 0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = 1_800_000_000.0
    assert retry_after_seconds(formatdate(now + 90, usegmt=True), now=now) == 90


class _Provider(BaseHTTPRequestHandler):
    """A token endpoint whose answers the test sets."""

    answers: list[tuple[int, dict[str, str], bytes, float]] = []
    seen: list[tuple[dict[str, str], dict[str, list[str]]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length", 0))
        _Provider.seen.append((dict(self.headers), parse_qs(self.rfile.read(length).decode())))
        status, headers, body, trickle = _Provider.answers.pop(0)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(trickle)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Provider.answers, _Provider.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()


def _client(url: str, method: str = "client_secret_basic") -> OAuthClient:
    return OAuthClient(client_id="id:with/odd chars", client_secret="s3cr&t", token_url=url, auth_method=method,
                       rules=LOOPBACK)  # the test's provider listens on loopback


def test_a_refresh_posts_the_grant_with_basic_authentication(provider: str) -> None:
    body = b'{"access_token": "at", "token_type": "bearer", "expires_in": 60, "scope": "a b"}'
    _Provider.answers.append((200, {}, body, 0))
    tokens = refresh(_client(provider), refresh_token="rt", timeout=5)
    assert tokens == TokenSet("at", "bearer", None, 60, ["a", "b"])
    headers, form = _Provider.seen[0]
    assert form == {"grant_type": ["refresh_token"], "refresh_token": ["rt"]}
    pair = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert pair == "id%3Awith%2Fodd%20chars:s3cr%26t"  # RFC 6749 2.3.1: form-encoded, then Basic


def test_client_secret_post_sends_the_credentials_in_the_form(provider: str) -> None:
    _Provider.answers.append((200, {}, b'{"access_token": "at", "refresh_token": "rt2"}', 0))
    assert refresh(_client(provider, "client_secret_post"), refresh_token="rt", timeout=5).refresh_token == "rt2"
    headers, form = _Provider.seen[0]
    assert "Authorization" not in headers
    assert form["client_id"] == ["id:with/odd chars"] and form["client_secret"] == ["s3cr&t"]


def test_an_error_answer_carries_its_code_status_and_retry_after(provider: str) -> None:
    _Provider.answers.append((429, {"Retry-After": "7"}, b'{"error": "slow_down"}', 0))
    with pytest.raises(ProviderError) as caught:
        refresh(_client(provider), refresh_token="rt", timeout=5)
    assert (caught.value.status, caught.value.error, caught.value.retry_after) == (429, "slow_down", 7)


def test_a_non_json_answer_is_an_error_named_by_its_status(provider: str) -> None:
    _Provider.answers.append((502, {"Content-Type": "text/html"}, b"<h1>bad gateway</h1>", 0))
    with pytest.raises(ProviderError) as caught:
        refresh(_client(provider), refresh_token="rt", timeout=5)
    assert (caught.value.status, caught.value.error) == (502, "http_502")


def test_a_provider_trickling_its_answer_is_cut_off_at_the_deadline(provider: str) -> None:
    body = b'{"access_token": "' + b"x" * 60 + b'"}'
    _Provider.answers.append((200, {}, body, 0.05))  # about 3.5 s in all, each byte well within the timeout
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        refresh(_client(provider), refresh_token="rt", timeout=1)
    assert caught.value.error == "timeout"
    assert time.monotonic() - started < 2.5


def test_an_unreachable_provider_is_a_connection_error() -> None:
    with pytest.raises(ProviderError) as caught:
        refresh(_client("http://127.0.0.1:9/token"), refresh_token="rt", timeout=2)
    assert caught.value.error == "connection_error" and caught.value.status is None


def test_secrets_stay_out_of_reprs() -> None:
    from shared.nonces import PendingState

    objects = [OAuthClient(client_id="cid", client_secret="client-secret-value", token_url="https://idp.example/t"),
               TokenSet("access-token-value", "Bearer", "refresh-token-value", 60, None),
               PendingState("cs", "int", "pkce-verifier-value", "binding"),
               ProviderError("invalid_response", error="invalid_response", refresh_token="refresh-token-value")]
    text = " ".join(repr(item) + str(item) for item in objects)
    assert "cid" in text and "Bearer" in text
    for secret in ("client-secret-value", "access-token-value", "refresh-token-value", "pkce-verifier-value"):
        assert secret not in text


def test_retry_after_is_at_most_an_hour() -> None:
    assert retry_after_seconds("86400") == 3600
    assert retry_after_seconds("inf") == 3600 and retry_after_seconds("nan") is None
    now = 1_800_000_000.0
    assert retry_after_seconds(formatdate(now + 7 * 86400, usegmt=True), now=now) == 3600


@pytest.mark.parametrize(("given", "kept"), [('"3600"', 3600), ("3600.0", 3600), ("null", None), ("1", 1)])
def test_expires_in_as_digits_or_a_whole_float_is_accepted(provider: str, given: str, kept: int | None) -> None:
    _Provider.answers.append((200, {}, b'{"access_token": "at", "expires_in": ' + given.encode() + b"}", 0))
    assert refresh(_client(provider), refresh_token="rt", timeout=5).expires_in == kept
