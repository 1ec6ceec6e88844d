"""Metrics of a worker: refresh and webhook outcomes, counted from Celery's task
signals, served on WORKER_METRICS_PORT by each worker process. (Code exchanges are
counted by the exchange itself, which knows how each run ended.)"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_prerun, worker_ready
from prometheus_client import start_http_server

from shared.config import get_settings
from shared.metrics import EXCHANGES, REFRESH_LATENCY, REFRESHES, WEBHOOK_DELIVERIES
from shared.queue import DELIVER_WEBHOOK, REFRESH_BATCH, REFRESH_CONNECTION

log = logging.getLogger(__name__)

# What a chunk's result counts that is a refresh's end (not its fan-out or deferral).
BATCH_OUTCOMES = frozenset({"refreshed", "not_needed", "stale", "failed", "rate_limited", "needs_reauth"})
# Series that a worker exports from its start, at 0: Prometheus sees no increase in a
# series that first appears at 1, so without them a rate would miss the first of each.
FROM_THE_START = (
    (REFRESHES, [("refreshed",), ("failed",), ("rate_limited",), ("needs_reauth",), ("error",)]),
    (WEBHOOK_DELIVERIES, [("delivered",), ("failed",), ("given_up",)]),
    (EXCHANGES, [("connected", ""), ("interrupted", ""), ("link_used", ""), ("revoked", "")]),
)
_started: dict[str, float] = {}
_lock = threading.Lock()


@worker_ready.connect
def _serve(**_: Any) -> None:
    for counter, label_sets in FROM_THE_START:
        for labels in label_sets:
            counter.labels(*labels)
    port = get_settings().worker_metrics_port
    if port:
        start_http_server(port)
        log.info("metrics on port %s", port)


@task_prerun.connect
def _start(task_id: str, **_: Any) -> None:
    with _lock:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _count(task_id: str, task: Task, retval: Any = None, state: str | None = None, **_: Any) -> None:
    with _lock:
        started = _started.pop(task_id, None)
    if task.name == REFRESH_CONNECTION:
        REFRESHES.labels(retval if isinstance(retval, str) else (state or "error").lower()).inc()
        if started is not None:
            REFRESH_LATENCY.observe(time.perf_counter() - started)
    elif task.name == REFRESH_BATCH and isinstance(retval, dict):
        for outcome, count in retval.items():
            if outcome in BATCH_OUTCOMES and count:
                REFRESHES.labels(outcome).inc(count)
    elif task.name == DELIVER_WEBHOOK and isinstance(retval, str):
        WEBHOOK_DELIVERIES.labels(retval).inc()
