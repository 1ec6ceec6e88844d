"""A strict fake of respond.io's OAuth 2.0 server, mounted under /sandbox in development only.

Authorization code with mandatory PKCE (S256), rotating refresh tokens with reuse detection,
RFC 7009 revocation, RFC 7662 introspection and RFC 9207 `iss`; per-client knobs script latency
and failures for tests and benchmarks. All state lives in Redis (`web.sandbox_store`).
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, jsonify, redirect, render_template, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from shared.config import Settings
from shared.crypto import new_secret
from shared.pkce import s256_challenge
from web import runtime
from web import sandbox_store as store
from web.sandbox_store import register_client

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox")

DEFAULT_WORKSPACE = "Demo workspace"
GRANT_TYPES = ("authorization_code", "refresh_token")
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
AUTHORIZE_FIELDS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                    "code_challenge_method")
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}
SCRIPTED = {"500": (500, "server_error"), "502": (502, "temporarily_unavailable"),
            "503": (503, "temporarily_unavailable"), "429": (429, "temporarily_unavailable"),
            "timeout": (504, "temporarily_unavailable"), "invalid_grant": (400, "invalid_grant"),
            "unauthorized_client": (400, "unauthorized_client")}


class OAuthError(Exception):
    """An RFC 6749 §5.2 JSON error."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error, self.description, self.status, self.headers = error, description, status, headers or {}


class PageError(Exception):
    """An authorization request that must not be redirected back: answered with an HTML page."""


class RedirectError(Exception):
    """An authorization request error sent back to the client's redirect URI."""

    def __init__(self, redirect_uri: str, state: str | None, error: str, description: str) -> None:
        super().__init__(description)
        self.redirect_uri, self.state, self.error, self.description = redirect_uri, state, error, description


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request."""

    client_id: str
    redirect_uri: str
    state: str | None
    scopes: list[str]
    code_challenge: str
    fields: list[tuple[str, str]]


def issuer_url(settings: Settings) -> str:
    """The sandbox's issuer identifier (RFC 9207 `iss`)."""
    return f"{settings.public_base_url}/sandbox"


@bp.errorhandler(OAuthError)
def _oauth_error(error: OAuthError) -> Response:
    response = jsonify({"error": error.error, "error_description": error.description})
    response.status_code = error.status
    response.headers.update({"Cache-Control": "no-store", **error.headers})
    return response


@bp.errorhandler(PageError)
def _page_error(error: PageError) -> Response:
    return _page(render_template("sandbox_error.html", message=str(error)), 400)


@bp.errorhandler(RedirectError)
def _redirect_error(error: RedirectError) -> BaseResponse:
    return _back(error.redirect_uri, {"error": error.error, "error_description": error.description,
                                      "state": error.state})


def _page(html: str, status: int) -> Response:
    return Response(html, status=status, headers=PAGE_HEADERS, mimetype="text/html")


def _back(redirect_uri: str, params: dict[str, str | None]) -> BaseResponse:
    """302 to the client's redirect URI, keeping its query and adding `iss`."""
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query) + [(k, v) for k, v in params.items() if v is not None]
    query.append(("iss", issuer_url(runtime().settings)))
    response = redirect(urlunsplit(parts._replace(query=urlencode(query, quote_via=quote))), 302)
    response.headers.update({"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
    return response


def _authorization(params: MultiDict[str, str]) -> AuthorizationRequest:
    """Validate an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3)."""
    client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
    if len(params.getlist("client_id")) > 1 or len(params.getlist("redirect_uri")) > 1:
        raise PageError("client_id and redirect_uri must each be given once.")
    registered = store.redirect_uris(runtime().redis, client_id) if client_id else None
    if registered is None:
        raise PageError("Unknown client_id.")
    if redirect_uri not in registered:
        raise PageError("redirect_uri is not registered for this client.")
    state = params.get("state")

    def fail(error: str, description: str) -> RedirectError:
        return RedirectError(redirect_uri, state, error, description)

    repeated = [name for name in AUTHORIZE_FIELDS if len(params.getlist(name)) > 1]
    if repeated:
        raise fail("invalid_request", f"parameters given more than once: {', '.join(repeated)}")
    if params.get("response_type") != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or not CHALLENGE.fullmatch(challenge):
        raise fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    scopes = list(dict.fromkeys(params.get("scope", "").split()))
    if not all(SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise fail("invalid_scope", "scope contains invalid characters")
    fields = [(name, params[name]) for name in AUTHORIZE_FIELDS if name in params]
    return AuthorizationRequest(client_id, redirect_uri, state, scopes, challenge, fields)


@bp.get("/oauth/authorize")
def authorize_page() -> Response:
    """The consent page."""
    auth = _authorization(request.args)
    return _page(render_template("sandbox_consent.html", auth=auth, workspace=DEFAULT_WORKSPACE), 200)


@bp.post("/oauth/authorize")
def authorize_decision() -> BaseResponse:
    """Approve (a code) or deny, back to the client's redirect URI."""
    auth = _authorization(request.form)
    decision = request.form.get("decision")
    if decision == "deny":
        raise RedirectError(auth.redirect_uri, auth.state, "access_denied", "the user denied the request")
    if decision != "approve":
        raise PageError("decision must be approve or deny.")
    workspace = request.form.get("workspace", "").strip()[:100] or DEFAULT_WORKSPACE
    code = new_secret(32)
    store.save_code(runtime().redis, code, client_id=auth.client_id, redirect_uri=auth.redirect_uri,
                    challenge=auth.code_challenge, scope=" ".join(auth.scopes), workspace=workspace)
    return _back(auth.redirect_uri, {"code": code, "state": auth.state})


def _form() -> dict[str, str]:
    """The form of a token/revoke/introspect request; each parameter at most once."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    repeated = [name for name, values in request.form.lists() if len(values) > 1]
    if repeated:
        raise OAuthError("invalid_request", f"parameters given more than once: {', '.join(repeated)}")
    return request.form.to_dict()


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401, {"WWW-Authenticate": 'Basic realm="sandbox"'})


def _credentials(form: Mapping[str, str]) -> tuple[str, str]:
    """client_secret_basic (form-urlencoded inside Basic, RFC 6749 §2.3.1) or client_secret_post."""
    header = request.headers.get("Authorization")
    if header is None:
        if "client_id" not in form or "client_secret" not in form:
            raise _invalid_client("client authentication is required")
        return form["client_id"], form["client_secret"]
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("only Basic client authentication is supported")
    if "client_secret" in form:
        raise OAuthError("invalid_request", "use only one client authentication method")
    try:
        client_id, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("malformed Basic credentials") from None
    client_id, secret = unquote(client_id), unquote(secret)
    if not sep or form.get("client_id", client_id) != client_id:
        raise _invalid_client("malformed Basic credentials")
    return client_id, secret


def _client(form: Mapping[str, str], grant_type: str = "") -> store.TokenContext:
    client_id, secret = _credentials(form)
    context = store.authenticate(runtime().redis, client_id, secret, grant_type)
    if context is None:
        raise _invalid_client("unknown client or wrong secret")
    return context


def _required(form: Mapping[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise OAuthError("invalid_request", f"missing parameters: {', '.join(missing)}")
    return [form[name] for name in names]


@bp.post("/oauth/token")
def token() -> Response:
    """RFC 6749 token endpoint: authorization_code (with PKCE) and rotating refresh_token grants."""
    form = _form()
    grant_type = form.get("grant_type", "")
    context = _client(form, grant_type if grant_type in GRANT_TYPES else "")
    if not grant_type:
        raise OAuthError("invalid_request", "missing parameters: grant_type")
    if grant_type not in GRANT_TYPES:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    if context.latency_ms:
        time.sleep(context.latency_ms / 1000)
    if context.failure:
        status, error = SCRIPTED[context.failure]
        if context.failure == "timeout":
            time.sleep(context.timeout_seconds)
        headers = {"Retry-After": str(context.retry_after)} if status == 429 else {}
        raise OAuthError(error, f"scripted failure {context.failure}", status, headers)
    access, issued_refresh = new_secret(32), new_secret(32)
    refresh: str | None = issued_refresh
    tokens: dict[str, Any] = {"client_id": context.client_id, "access_token": access,
                              "exp": int(time.time()) + context.access_ttl, "ttl": context.access_ttl}
    if grant_type == "authorization_code":
        code, redirect_uri, verifier = _required(form, "code", "redirect_uri", "code_verifier")
        if not VERIFIER.fullmatch(verifier):
            raise OAuthError("invalid_request", "code_verifier must be 43-128 unreserved characters")
        ok, text = store.exchange_code(runtime().redis, code, redirect_uri=redirect_uri,
                                       challenge=s256_challenge(verifier), refresh_token=issued_refresh, **tokens)
    else:
        (old,) = _required(form, "refresh_token")
        if not context.rotate_refresh_tokens:
            refresh = None
        ok, text = store.rotate_refresh(runtime().redis, old, new_refresh_token=refresh, **tokens)
    if not ok:
        raise OAuthError("invalid_grant", text)
    body = {"access_token": access, "token_type": "Bearer", "expires_in": context.access_ttl, "scope": text}
    if refresh:
        body["refresh_token"] = refresh
    response = jsonify(body)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


@bp.post("/oauth/revoke")
def revoke() -> Response:
    """RFC 7009: 200 for any token, known or not, of an authenticated client."""
    form = _form()
    context = _client(form)
    (token_,) = _required(form, "token")
    store.revoke_token(runtime().redis, context.client_id, token_)
    return Response(status=200, headers={"Cache-Control": "no-store"})


@bp.post("/oauth/introspect")
def introspect() -> Response:
    """RFC 7662 introspection of the client's own tokens."""
    form = _form()
    context = _client(form)
    (token_,) = _required(form, "token")
    response = jsonify(store.introspect(runtime().redis, context.client_id, token_, int(time.time())))
    response.headers["Cache-Control"] = "no-store"
    return response


def _json_body() -> Any:
    """The request's JSON, or None when it is not JSON or is nested too deep to parse."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


@bp.post("/clients")
def create_client() -> tuple[Response, int]:
    """Register a client (dev only, no authentication)."""
    body = _json_body() if request.get_data() else {}
    if not isinstance(body, dict):
        raise OAuthError("invalid_client_metadata", "the body must be a JSON object")
    uris = body.get("redirect_uris", [runtime().settings.redirect_uri])
    try:
        client = register_client(runtime().redis, uris, body.get("access_token_ttl"))
    except ValueError as error:
        raise OAuthError("invalid_client_metadata", str(error)) from None
    return jsonify(client), 201


def _known(client_id: str) -> None:
    if store.redirect_uris(runtime().redis, client_id) is None:
        raise OAuthError("not_found", "unknown client", 404)


@bp.route("/admin/clients/<client_id>/knobs", methods=["GET", "PUT"])
def knobs(client_id: str) -> Response:
    """Read or replace a client's test knobs (latency, TTL, scripted failures)."""
    _known(client_id)
    if request.method == "PUT":
        try:
            values = store.validate_knobs(_json_body())
        except ValueError as error:
            raise OAuthError("invalid_request", str(error)) from None
        store.set_knobs(runtime().redis, client_id, values)
    return jsonify(store.get_knobs(runtime().redis, client_id))


@bp.get("/admin/clients/<client_id>/stats")
def stats(client_id: str) -> Response:
    """A client's counters."""
    _known(client_id)
    return jsonify(store.get_stats(runtime().redis, client_id))
