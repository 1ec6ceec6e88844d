"""The browser flow: start at the provider, take the callback, show the attempt.

The web never calls the provider: the callback stores the code encrypted and
enqueues the exchange with the attempt id only."""
from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, redirect, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import insert, select

from shared import pkce
from shared.attempts import expire_if_stale
from shared.crypto import digest, new_secret, same
from shared.enums import AttemptStatus
from shared.integrations import TargetCache
from shared.models import ConnectAttempt, ConnectSession, new_id, utcnow
from shared.nonces import STATE_TTL_SECONDS, PendingState
from shared.providers import build_authorize_url
from shared.queue import EXCHANGE_CODE, INTERACTIVE_QUEUE
from web import runtime, schemas
from web.errors import ApiError
from web.openapi import HTML, JSON, Answer, operation, page
from web.openapi import redirect as redirect_answer
from web.serializers import answer

bp = Blueprint("connect", __name__)
targets = TargetCache()

BINDING_COOKIE = "connect_binding"
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# No referrer leaves these pages (the callback URL carries the code), and nothing
# is loaded from anywhere but inline styles.
PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@bp.after_request
def _page_headers(response: Response) -> Response:
    response.headers.update(PAGE_HEADERS)
    return response


def _page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("message.html", title=title, message=message), status


# Built once: Core, no ORM bookkeeping, on every callback.
_NEW_ATTEMPT = insert(ConnectAttempt.__table__)


@bp.get("/connect/<token>")
@operation("startConnect", "browser", {
    302: redirect_answer("To the provider's authorize page, with a fresh state", "the authorize URL"),
    404: page("Unknown link"),
    410: page("Expired link, or spent by a connect that succeeded through it"),
})
def start(token: str) -> ResponseReturnValue:
    """Remember a fresh state and send the browser to the provider.

    Opening the link does not spend it (a chat app's preview or a mail scanner opens
    links too): every opening starts its own state, and the link is spent only when an
    attempt through it succeeds (the exchange claims it)."""
    rt = runtime()
    token_hash = digest(token)
    with rt.db.autocommit() as session:  # reads only: no transaction to open and close
        found = session.execute(
            select(ConnectSession.id, ConnectSession.integration_id, ConnectSession.expires_at,
                   ConnectSession.used_at)
            .where(ConnectSession.token_hash == token_hash)
        ).first()
        if found is None:
            return _page(404, "Link not found", "This connect link is not valid. Ask the app for a new one.")
        if found.used_at is not None:
            return _page(410, "Link already used", "This connect link has been used. Ask the app for a new one.")
        if found.expires_at <= utcnow():
            return _page(410, "Link expired", "This connect link has expired. Ask the app for a new one.")
        target = targets.get(session, found.integration_id)
        assert target is not None

    binding = request.cookies.get(BINDING_COOKIE) or new_secret(24)
    verifier = pkce.new_verifier()
    state = new_secret(32)
    rt.states.put(state, PendingState(session_id=found.id, integration_id=target.id, code_verifier=verifier,
                                      binding_hash=digest(binding)))
    location = build_authorize_url(
        target.authorize_url,
        client_id=target.client_id,
        redirect_uri=rt.settings.redirect_uri,
        scopes=list(target.scopes),
        state=state,
        code_challenge=pkce.s256_challenge(verifier) if target.pkce else None,
        extra_params=dict(target.extra_authorize_params),
    )
    response = redirect(location, 302)
    response.set_cookie(BINDING_COOKIE, binding, max_age=STATE_TTL_SECONDS, httponly=True, samesite="Lax",
                        secure=rt.settings.secure_cookies, path="/")
    return response


def _provider_error(value: str) -> str:
    return value if _ERROR_CODE.fullmatch(value) else "provider_error"


@bp.get("/oauth/callback")
@operation("oauthCallback", "browser", {
    303: redirect_answer("To the attempt's status page", "/connect/attempts/{id}"),
    400: page("Unknown or used state, or another browser"),
    404: page("The connect session is gone"),
}, query=schemas.CallbackQuery)
def callback() -> ResponseReturnValue:
    """Consume the state, check the browser and the issuer, then queue the exchange."""
    rt = runtime()
    args = request.args
    state = args.get("state", "")
    pending = rt.states.consume(state) if state else None
    if pending is None:
        return _page(400, "Sign-in could not be completed",
                     "This sign-in has expired or was already used. Start again from the app.")
    binding = request.cookies.get(BINDING_COOKIE, "")
    if not binding or not same(digest(binding), pending.binding_hash):
        return _page(400, "Sign-in could not be completed",
                     "This sign-in was started in another browser. Start again from the app, in this browser.")

    attempt = ConnectAttempt(id=new_id("att"), session_id=pending.session_id)
    with rt.db.autocommit() as session:  # one INSERT: one round trip
        target = targets.get(session, pending.integration_id)
        if target is None:
            return _page(404, "Link not found", "This sign-in no longer exists.")
        if "error" in args:
            error: str | None = _provider_error(args["error"])
        elif target.issuer and not same(args.get("iss", ""), target.issuer):
            error = "issuer_mismatch"
        elif not args.get("code"):
            error = "missing_code"
        else:
            error = None
            rt.codes.put(attempt.id, args["code"], pending.code_verifier)
        if error:
            attempt.status, attempt.error, attempt.finished_at = AttemptStatus.FAILED, error, utcnow()
        session.execute(_NEW_ATTEMPT, {"id": attempt.id, "session_id": attempt.session_id,
                                       "status": attempt.status or AttemptStatus.PENDING, "error": attempt.error,
                                       "finished_at": attempt.finished_at, "created_at": utcnow()})
    if not error:
        rt.celery.send_task(EXCHANGE_CODE, args=[attempt.id], queue=INTERACTIVE_QUEUE, ignore_result=True)
    return redirect(f"/connect/attempts/{attempt.id}", 303)


def _return_location(return_url: str, attempt: ConnectAttempt) -> str:
    params: dict[str, str] = {"status": attempt.status}
    if attempt.connection_id:
        params["connection_id"] = attempt.connection_id
    if attempt.error:
        params["error"] = attempt.error
    parts = urlsplit(return_url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


@bp.get("/connect/attempts/<attempt_id>")
@operation("getConnectAttempt", "browser", {
    200: Answer("The attempt: a page, or JSON with Accept: application/json", {HTML: None, JSON: schemas.Attempt}),
    303: redirect_answer("The attempt ended: back to the session's return_url",
                         "return_url with connection_id, status and error"),
    404: Answer("No such attempt", {HTML: None, JSON: schemas.Error}, ("not_found",)),
})
def attempt_status(attempt_id: str) -> ResponseReturnValue:
    """The attempt as JSON, or a page that refreshes until it ends and then returns to the app."""
    with runtime().db.session() as session:
        attempt = session.get(ConnectAttempt, attempt_id)
        if attempt is not None:
            expire_if_stale(session, attempt)
        connect_session = session.get(ConnectSession, attempt.session_id) if attempt else None
    wants_json = request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"
    if attempt is None or connect_session is None:
        if wants_json:
            return ApiError(404, "not_found", "attempt not found").response()
        return _page(404, "Not found", "There is no such sign-in.")
    if wants_json:
        return answer(schemas.Attempt.model_validate(attempt), exclude_none=True)
    if attempt.status != AttemptStatus.PENDING and connect_session.return_url:
        return redirect(_return_location(connect_session.return_url, attempt), 303)
    return render_template("attempt.html", attempt=attempt), 200
