"""Prometheus gauges read from the database and the broker at scrape time, so every
web process answers the same cluster-wide figures."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shared.enums import ConnectionStatus
from shared.models import Connection, utcnow
from shared.queue import DEFAULT_QUEUE, INTERACTIVE_QUEUE
from shared.runtime import Runtime

STATUSES = tuple(ConnectionStatus)


class StateCollector(Collector):
    """Connections by status, the refresh backlog, and the broker's queue lengths."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self._rt
        horizon = utcnow() + timedelta(seconds=rt.settings.refresh_margin_seconds)
        with rt.db.session() as session:
            counts = dict(session.execute(select(Connection.status, func.count()).group_by(Connection.status)).all())
            due = session.scalar(select(func.count()).select_from(Connection).where(
                Connection.status == "active", Connection.expires_at <= horizon)) or 0
            failing = session.scalar(select(func.count()).select_from(Connection).where(
                Connection.status == "active", Connection.refresh_failures > 0)) or 0
        by_status = GaugeMetricFamily("oauth_connections", "Connections by status.", labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("oauth_connections_expiring", "Active connections whose token expires within "
                                "REFRESH_MARGIN_SECONDS (the refresh backlog, roughly).", value=due)
        yield GaugeMetricFamily("oauth_connections_failing", "Active connections whose last refreshes failed.",
                                value=failing)
        queues = GaugeMetricFamily("oauth_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
        lengths = rt.redis.pipeline(transaction=False).llen(INTERACTIVE_QUEUE).llen(DEFAULT_QUEUE).execute()
        for queue, length in zip((INTERACTIVE_QUEUE, DEFAULT_QUEUE), lengths, strict=True):
            queues.add_metric([queue], length)
        yield queues
