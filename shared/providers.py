"""Provider kinds, their default URLs, and the client of token and revocation endpoints."""
from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from urllib3.util import parse_url

from shared import egress
from shared.egress import AnswerTooLarge, ForbiddenAddress, Rules
from shared.metrics import PROVIDER_CALLS

RESPONDIO_AUTHORIZE_URL = "https://app.respond.io/oauth/authorize"
RESPONDIO_TOKEN_URL = "https://app.respond.io/oauth/token"
RESPONDIO_API_BASE_URL = "https://api.respond.io/v2"


def default_urls(provider: str, public_base_url: str) -> dict[str, str]:
    """The URLs (and issuer) a provider kind uses when the integration names none."""
    if provider == "respondio":
        return {"authorize_url": RESPONDIO_AUTHORIZE_URL, "token_url": RESPONDIO_TOKEN_URL,
                "api_base_url": RESPONDIO_API_BASE_URL}
    if provider == "sandbox":
        issuer = f"{public_base_url}/sandbox"
        return {"authorize_url": f"{issuer}/oauth/authorize", "token_url": f"{issuer}/oauth/token",
                "revoke_url": f"{issuer}/oauth/revoke", "issuer": issuer, "api_base_url": f"{issuer}/api/v2"}
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
    client_secret: str = field(repr=False)
    token_url: str
    auth_method: str = "client_secret_basic"
    # What the call may reach (checked again on every call, at the address connected to).
    rules: Rules = Rules()


@dataclass(frozen=True)
class TokenSet:
    """A successful token response."""

    access_token: str = field(repr=False)
    token_type: str
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scopes: list[str] | None


class ProviderError(Exception):
    """The provider answered with an error, or could not be reached. `refresh_token` is a
    new refresh token an otherwise unusable answer carried: the provider has rotated, so
    the caller must keep it."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None,
                 retry_after: float | None = None, refresh_token: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self.refresh_token = refresh_token


MAX_RETRY_AFTER_SECONDS = 3600.0
# Ten years: longer lifetimes are nonsense, and `1e12` would overflow a datetime.
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
MAX_TOKEN_TYPE_CHARS = 32  # the column's width
MAX_TOKEN_CHARS = 16384
MAX_SCOPES = 200
TOKEN_CHARS = re.compile(r"[\x20-\x7e]+")  # RFC 6749 VSCHAR (and space in scopes)
TOKEN_TYPE = re.compile(r"[A-Za-z0-9_.-]+")
ERROR_CODE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # outside RFC 6749 §5.2 `error` characters
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def clean_text(value: object, limit: int) -> str:
    """Provider-supplied text made safe to log and store: one line, no control
    characters, at most `limit` characters."""
    text = CONTROL.sub(" ", value if isinstance(value, str) else "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date, RFC 9110),
    bounded to an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - (now if now is not None else time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


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


def post(url: str, rules: Rules, body: dict[str, str] | bytes, headers: dict[str, str],
         timeout: float) -> egress.Answer:
    """POST once through the egress guard, bounded as a token call is (webhook deliveries
    go out the same way); every way it can fail without an answer is a ProviderError.
    Each call is counted by host and HTTP status, or by what kept it from an answer."""
    host, outcome = _host(url), "error"
    try:
        answer = egress.post(url, rules, data=body, headers=headers, timeout=timeout)
        outcome = str(answer.status)
        return answer
    except ForbiddenAddress as refused:
        outcome = "forbidden_address"
        raise ProviderError(f"forbidden_address: {refused}", error="forbidden_address") from None
    except AnswerTooLarge as error:
        outcome = "too_large"
        raise ProviderError("invalid_response: answer too large", status=error.status,
                            error="invalid_response") from None
    except egress.TimedOut as error:
        outcome = "timeout"
        raise ProviderError(f"timeout after {timeout:g}s", error="timeout") from error
    except egress.Unreachable as error:
        outcome = "connection_error"
        raise ProviderError(f"connection error: {type(error.__cause__).__name__}",
                            error="connection_error") from error
    finally:
        PROVIDER_CALLS.labels(host, outcome).inc()


def _host(url: str) -> str:
    """The host a URL names, for counting (the egress guard judges the URL itself)."""
    try:
        return parse_url(url).host or "?"
    except ValueError:
        return "?"


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; None for anything else (including nesting too deep to parse)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _token(value: object) -> str | None:
    """A token as RFC 6749 allows it, or None."""
    if isinstance(value, str) and len(value) <= MAX_TOKEN_CHARS and TOKEN_CHARS.fullmatch(value) and value.strip():
        return value
    return None


def _expires_in(value: object) -> int | None:
    """A lifetime in whole seconds within bounds; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXPIRES_IN:
        raise ValueError("expires_in must be a whole number of seconds between 1 and ten years")
    return value


def _token_type(value: object) -> str:
    if value is None:
        return "Bearer"
    if isinstance(value, str) and len(value) <= MAX_TOKEN_TYPE_CHARS and TOKEN_TYPE.fullmatch(value):
        return value
    raise ValueError(f"token_type must be a word of at most {MAX_TOKEN_TYPE_CHARS} characters")


def _scopes(value: object) -> list[str] | None:
    if not isinstance(value, str) or not TOKEN_CHARS.fullmatch(value):
        return None
    scopes = value.split()
    if len(scopes) > MAX_SCOPES:
        raise ValueError("the answer names too many scopes")
    return scopes


def _error(answer: egress.Answer, payload: dict[str, Any] | None) -> ProviderError:
    """The ProviderError of an answer that is not a token, its text sanitized."""
    retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
    if 300 <= answer.status < 400:
        return ProviderError(f"redirect_refused: the token endpoint answered {answer.status}, not followed",
                             status=answer.status, error="redirect_refused", retry_after=retry_after)
    payload = payload or {}
    error = ERROR_CODE.sub("", payload["error"])[:64] if isinstance(payload.get("error"), str) else ""
    if not error:
        error = "invalid_response" if answer.status == 200 else f"http_{answer.status}"
    description = clean_text(payload.get("error_description"), 200)
    return ProviderError(f"{error}: {description}" if description else error, status=answer.status, error=error,
                         retry_after=retry_after)


def token_set(answer: egress.Answer) -> TokenSet:
    """The TokenSet of a token-endpoint answer, every field checked before anything is
    stored; ProviderError otherwise, carrying any new refresh token the answer held."""
    payload = _json_object(answer.body)
    if answer.status != 200 or payload is None or ("error" in payload and "access_token" not in payload):
        raise _error(answer, payload)
    refresh_token = _token(payload.get("refresh_token"))
    access_token = _token(payload.get("access_token"))
    try:
        if access_token is None:
            raise ValueError("access_token must be a non-empty printable string")
        return TokenSet(access_token=access_token, token_type=_token_type(payload.get("token_type")),
                        refresh_token=refresh_token, expires_in=_expires_in(payload.get("expires_in")),
                        scopes=_scopes(payload.get("scope")))
    except ValueError as problem:
        raise ProviderError(f"invalid_response: {problem}", status=answer.status, error="invalid_response",
                            refresh_token=refresh_token) from None


def request_token(client: OAuthClient, form: dict[str, str], timeout: float) -> TokenSet:
    """POST the token endpoint once; raise ProviderError on anything but a usable token."""
    body, headers = _authenticated(client, form)
    return token_set(post(client.token_url, client.rules, body, headers, timeout))


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


def revoke(client: OAuthClient, revoke_url: str, *, token: str, token_type_hint: str, timeout: float) -> None:
    """RFC 7009 revocation of one token, with the client's authentication, through the
    same egress guard; raise ProviderError unless the server answers 200 (which it does
    for unknown tokens too)."""
    body, headers = _authenticated(client, {"token": token, "token_type_hint": token_type_hint})
    answer = post(revoke_url, client.rules, body, headers, timeout)
    if answer.status != 200:
        raise _error(answer, _json_object(answer.body))
