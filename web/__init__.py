"""The thin Flask front end: browser flow, tenant API, operations and (in dev) the sandbox."""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request
from flask.sessions import SessionInterface, SessionMixin
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException

from shared import logs
from shared.config import Settings, get_settings
from shared.runtime import Runtime, build_runtime
from web.metrics import StateCollector, count_requests
from web.updates import UpdateListener


class App(Flask):
    """Flask, logging a failed request by its route: a connect link's path is its token."""

    def log_exception(self, exc_info: Any) -> None:
        rule = request.url_rule.rule if request.url_rule else "(no route)"
        self.logger.error("Exception on %s [%s]", rule, request.method, exc_info=exc_info)


class NoSessions(SessionInterface):
    """No Flask session: nothing here keeps state in a signed cookie (the connect flow's
    state lives in Redis), so no request pays for opening or saving one. Writing to
    `flask.session` fails loudly (Flask's NullSession)."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: SessionMixin, response: Any) -> None:
        return None


def create_app(settings: Settings | None = None, runtime_: Runtime | None = None) -> Flask:
    """Build the web application from the settings (read from the environment by default).

    Tests may pass a ready runtime (for instance one over fakeredis)."""
    settings = runtime_.settings if runtime_ else settings or get_settings()
    app = App(__name__)
    # `/connect//x` is a 404 like any unknown path, not a redirect that carries a link token along.
    app.url_map.merge_slashes = False
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=256 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # fields in the documented order
    app.session_interface = NoSessions()
    rt = app.extensions["runtime"] = runtime_ or build_runtime(settings)
    app.extensions["updates"] = UpdateListener(rt.redis, settings.token_cache_seconds)
    app.extensions["metrics"] = CollectorRegistry(auto_describe=False)
    app.extensions["metrics"].register(StateCollector(rt))

    from web import api, cli, connect, ops, webhooks
    from web.errors import refuse_unreadable_input
    from web.limits import init_limits

    app.register_blueprint(connect.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(ops.bp)
    app.register_error_handler(HTTPException, api.api_http_error)
    app.before_request(refuse_unreadable_input)
    init_limits(app, rt, browser=[connect.bp], api=[api.bp, webhooks.bp])
    if settings.sandbox_provider:
        from web import sandbox, sandbox_api

        app.register_blueprint(sandbox.bp)
        app.register_blueprint(sandbox_api.bp)
    cli.register(app)
    app.before_request(_log_context)
    count_requests(app)
    return app


def _log_context() -> None:
    """Each request's log lines carry the ids in its path (a gthread thread serves many)."""
    logs.clear()
    logs.bind(**logs.ids_of(*(request.view_args or {}).values()))


def runtime() -> Runtime:
    """The runtime of the current application."""
    return current_app.extensions["runtime"]
