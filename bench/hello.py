"""The web application plus one hello-world route, for a baseline under the same gunicorn setup:
`gunicorn -c gunicorn.conf.py "bench.hello:create_app()"`."""
from __future__ import annotations

from flask import Flask, Response

from web import create_app as create_web_app


def create_app() -> Flask:
    """`web:create_app()` with `GET /bench/hello` answering "ok"."""
    app = create_web_app()

    @app.get("/bench/hello")
    def bench_hello() -> Response:
        return Response("ok", mimetype="text/plain")

    return app
