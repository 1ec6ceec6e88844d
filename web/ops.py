"""Operations endpoints: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from shared import metrics as service_metrics
from web import runtime, schemas
from web.openapi import ok, operation
from web.openapi import text as plain_text
from web.serializers import answer

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@operation("healthz", "operations", {200: plain_text("The process lives")})
def healthz() -> Response:
    """200 while the process lives."""
    return Response("ok\n", mimetype="text/plain")


@bp.get("/readyz")
@operation("readyz", "operations", {200: ok(schemas.Readiness, "The database and Redis answer"),
                                    503: ok(schemas.Readiness, "The database or Redis does not answer")})
def readyz() -> Response:
    """200 when the database and Redis answer, 503 otherwise."""
    rt = runtime()
    checks: dict[str, str] = {}
    try:
        with rt.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["database"] = type(error).__name__
    try:
        rt.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["redis"] = type(error).__name__
    ready = all(value == "ok" for value in checks.values())
    readiness = schemas.Readiness(ready=ready, checks=schemas.ReadinessChecks(**checks))
    return answer(readiness, 200 if ready else 503)


@bp.get("/metrics")
@operation("metrics", "operations", {200: plain_text("Prometheus text exposition"),
                                     401: plain_text("METRICS_TOKEN is set and the bearer token is not it")})
def metrics() -> Response:
    """Prometheus text: the web's counters (every process's), then the service's state.
    With METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`."""
    expected = runtime().settings.metrics_token
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return Response("metrics need 'Authorization: Bearer <METRICS_TOKEN>'\n", 401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    state = current_app.extensions["metrics"]
    body = generate_latest(service_metrics.registry()) + generate_latest(state)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
