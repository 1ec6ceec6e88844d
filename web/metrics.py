"""Metrics of the web: requests by route and status, counted across every gunicorn
process, and the service's state, computed at most every STATE_SECONDS by one process
and shared through Redis, so a scrape costs no query however many connections there are."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import redis
from flask import Flask, Response, g, request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.enums import ConnectionStatus
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS
from shared.models import Connection, WebhookDelivery, utcnow
from shared.queue import DEFAULT_QUEUE, INTERACTIVE_QUEUE, WEBHOOK_QUEUE
from shared.runtime import Runtime

log = logging.getLogger(__name__)

STATE_KEY = "metrics:state"
STATE_SECONDS = 15


def count_state(rt: Runtime) -> dict[str, Any]:
    """Connections by status, the refresh backlog, the failing ones and the webhook
    deliveries still pending: four index scans."""
    horizon = utcnow() + timedelta(seconds=rt.settings.refresh_margin_seconds)
    with rt.db.session() as session:
        counts = dict(session.execute(select(Connection.status, func.count()).group_by(Connection.status)).all())
        due = session.scalar(select(func.count()).select_from(Connection).where(
            Connection.status == "active", Connection.expires_at <= horizon)) or 0
        failing = session.scalar(select(func.count()).select_from(Connection).where(
            Connection.status == "active", Connection.refresh_failures > 0)) or 0
        # Through the index on next_attempt_at: delivered and given-up deliveries have none.
        pending = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.next_attempt_at.is_not(None))) or 0
    by_status = {status.value: counts.get(status, 0) for status in ConnectionStatus}
    return {"by_status": by_status, "due": due, "failing": failing, "webhook_pending": pending,
            "computed_at": time.time()}


class StateCollector(Collector):
    """The state gauges: read from Redis, where the first process to find them stale
    (behind a SET NX guard) recomputes them; queue lengths are read live (LLEN is O(1))."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._last: dict[str, Any] | None = None

    def _state(self) -> dict[str, Any] | None:
        client = self._rt.redis
        try:
            cached = cast(bytes | None, client.get(STATE_KEY))
            if cached:
                self._last = json.loads(cached)
            elif client.set(f"{STATE_KEY}:computing", 1, nx=True, ex=STATE_SECONDS):
                self._last = count_state(self._rt)
                client.set(STATE_KEY, json.dumps(self._last), ex=STATE_SECONDS)
        except redis.RedisError as error:
            log.warning("state metrics: Redis unavailable (%s)", type(error).__name__)
        return self._last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state()
        if state is not None:
            by_status = GaugeMetricFamily("oauth_connections", "Connections by status.", labels=["status"])
            for status, count in state["by_status"].items():
                by_status.add_metric([status], count)
            yield by_status
            yield GaugeMetricFamily("oauth_connections_expiring", "Active connections whose token expires within "
                                    "REFRESH_MARGIN_SECONDS (the refresh backlog, roughly).", value=state["due"])
            yield GaugeMetricFamily("oauth_connections_failing", "Active connections whose last refreshes failed.",
                                    value=state["failing"])
            yield GaugeMetricFamily("oauth_webhook_deliveries_pending", "Webhook deliveries not yet delivered "
                                    "nor given up (a growing figure means failing endpoints).",
                                    value=state.get("webhook_pending", 0))
            yield GaugeMetricFamily("oauth_state_age_seconds", "How old the state figures above are.",
                                    value=max(0.0, time.time() - state["computed_at"]))
        queues = GaugeMetricFamily("oauth_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
        names = (INTERACTIVE_QUEUE, WEBHOOK_QUEUE, DEFAULT_QUEUE)
        pipe = self._rt.redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        try:
            lengths = pipe.execute()
        except redis.RedisError:
            return
        for queue, length in zip(names, lengths, strict=True):
            queues.add_metric([queue], length)
        yield queues


def count_requests(app: Flask) -> None:
    """Count every request by its route template (never its path: a connect link's path
    is its token) and status, with its latency."""

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "(unmatched)"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        started = g.get("request_started")
        if started is not None:
            HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        return response
