"""Provider kinds, their default URLs, and the client of token and revocation endpoints."""
from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from urllib.request import getproxies_environment

import requests

from shared.egress import ForbiddenAddress, check_public

RESPONDIO_AUTHORIZE_URL = "https://app.respond.io/oauth/authorize"
RESPONDIO_TOKEN_URL = "https://app.respond.io/oauth/token"


def default_urls(provider: str, public_base_url: str) -> dict[str, str]:
    """The URLs (and issuer) a provider kind uses when the integration names none."""
    if provider == "respondio":
        return {"authorize_url": RESPONDIO_AUTHORIZE_URL, "token_url": RESPONDIO_TOKEN_URL}
    if provider == "sandbox":
        issuer = f"{public_base_url}/sandbox"
        return {"authorize_url": f"{issuer}/oauth/authorize", "token_url": f"{issuer}/oauth/token",
                "revoke_url": f"{issuer}/oauth/revoke", "issuer": issuer}
    return {}


def build_authorize_url(
    authorize_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    code_challenge: str | None,
    extra_params: dict[str, str] | None = None,
) -> str:
    """The provider's authorize URL with the flow's parameters, keeping any query it had."""
    parts = urlsplit(authorize_url)
    params: dict[str, str] = dict(parse_qsl(parts.query))
    params.update(extra_params or {})
    params.update({"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state})
    if scopes:
        params["scope"] = " ".join(scopes)
    if code_challenge:
        params.update({"code_challenge": code_challenge, "code_challenge_method": "S256"})
    return urlunsplit(parts._replace(query=urlencode(params, quote_via=quote)))


@dataclass(frozen=True)
class OAuthClient:
    """What a token-endpoint call needs of an integration, with the secret decrypted."""

    client_id: str
    client_secret: str
    token_url: str
    auth_method: str = "client_secret_basic"
    # Checked before every call: the URL must resolve to public addresses only.
    public_only: bool = True


@dataclass(frozen=True)
class TokenSet:
    """A successful token response."""

    access_token: str
    token_type: str
    refresh_token: str | None
    expires_in: int | None
    scopes: list[str] | None


class ProviderError(Exception):
    """The provider answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read in full within the deadline."""

    status: int
    headers: Mapping[str, str]
    body: bytes


MAX_BODY_BYTES = 1 << 20
_local = threading.local()


def _http() -> requests.Session:
    """A pooled HTTP session per thread. Without proxy variables in the environment,
    requests is told not to read it: that look-up costs more CPU than the call itself."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = bool(getproxies_environment())
    return session


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (now if now is not None else time.time()))


def _authenticated(client: OAuthClient, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Form and headers carrying the client's credentials (RFC 6749 §2.3.1)."""
    headers = {"Accept": "application/json"}
    form = dict(form)
    if client.auth_method == "client_secret_post":
        form.update({"client_id": client.client_id, "client_secret": client.client_secret})
    else:
        pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return form, headers


def post(url: str, body: dict[str, str] | bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST once through the providers' HTTP session, bounded as a token call is (webhook
    deliveries go out the same way); raise ProviderError when no answer came."""
    return _post(url, body, headers, timeout)


def _post(url: str, form: dict[str, str] | bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST once. Connecting and the first byte of the answer are each bounded by
    `timeout`, and the whole answer must have arrived `timeout` after the start, so a
    call never outlives the refresh lock (whose TTL is above twice the timeout)."""
    deadline = time.monotonic() + timeout
    try:
        with _http().post(url, data=form, headers=headers, timeout=(timeout, timeout), allow_redirects=False,
                          stream=True) as response:
            body = bytearray()
            # read1 returns whatever has arrived, so the deadline is checked as bytes come.
            while chunk := response.raw.read1(16384, decode_content=True):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ProviderError("answer too large", status=response.status_code, error="invalid_response")
                if time.monotonic() > deadline:
                    raise requests.Timeout("the answer did not arrive in time")
            return Answer(response.status_code, response.headers, bytes(body))
    except requests.Timeout as error:
        raise ProviderError(f"timeout after {timeout:g}s", error="timeout") from error
    except requests.RequestException as error:
        raise ProviderError(f"connection error: {type(error).__name__}", error="connection_error") from error


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def request_token(client: OAuthClient, form: dict[str, str], timeout: float) -> TokenSet:
    """POST the token endpoint once; raise ProviderError on anything but a token."""
    if client.public_only:
        try:
            check_public(client.token_url)
        except ForbiddenAddress as refused:
            raise ProviderError(str(refused), error="forbidden_address") from None
    body, headers = _authenticated(client, form)
    answer = _post(client.token_url, body, headers, timeout)
    payload = _json_object(answer.body)
    if answer.status != 200 or not isinstance(payload.get("access_token"), str):
        error = str(payload.get("error") or f"http_{answer.status}")[:64]
        description = str(payload.get("error_description") or "")[:200]
        message = f"{error}: {description}" if description else error
        raise ProviderError(message, status=answer.status, error=error,
                            retry_after=retry_after_seconds(answer.headers.get("Retry-After")))
    try:
        expires_in = int(payload["expires_in"]) if payload.get("expires_in") is not None else None
    except (TypeError, ValueError):
        raise ProviderError("invalid expires_in in the token answer", status=answer.status,
                            error="invalid_response") from None
    scope = payload.get("scope")
    refresh_token = payload.get("refresh_token")
    return TokenSet(
        access_token=payload["access_token"],
        token_type=str(payload.get("token_type") or "Bearer"),
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_in=expires_in,
        scopes=scope.split() if isinstance(scope, str) else None,
    )


def exchange_code(client: OAuthClient, *, code: str, redirect_uri: str, code_verifier: str | None,
                  timeout: float) -> TokenSet:
    """The authorization-code grant."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    return request_token(client, form, timeout)


def refresh(client: OAuthClient, *, refresh_token: str, timeout: float) -> TokenSet:
    """The refresh-token grant."""
    return request_token(client, {"grant_type": "refresh_token", "refresh_token": refresh_token}, timeout)
