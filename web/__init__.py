"""The thin Flask front end: browser flow, tenant API, operations and (in dev) the sandbox."""
from __future__ import annotations

from flask import Flask, current_app

from shared.config import Settings, get_settings
from shared.runtime import Runtime, build_runtime


def create_app(settings: Settings | None = None, runtime_: Runtime | None = None) -> Flask:
    """Build the web application from the settings (read from the environment by default).

    Tests may pass a ready runtime (for instance one over fakeredis)."""
    settings = runtime_.settings if runtime_ else settings or get_settings()
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=256 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # fields in the documented order
    app.extensions["runtime"] = runtime_ or build_runtime(settings)

    from web import api, cli, connect, ops

    app.register_blueprint(connect.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    if settings.sandbox_provider:
        from web import sandbox

        app.register_blueprint(sandbox.bp)
    cli.register(app)
    return app


def runtime() -> Runtime:
    """The runtime of the current application."""
    return current_app.extensions["runtime"]
