"""The service's Prometheus metrics, defined once: what the web counts per request and
what workers count per task and per provider call.

The web runs several gunicorn processes, so it counts in prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by gunicorn.conf.py); a worker is
one process of threads and serves its own figures on WORKER_METRICS_PORT."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("oauth_http_requests", "HTTP requests answered, by route template and status.",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("oauth_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                         ["route", "method"], buckets=LATENCY_BUCKETS)

REFRESHES = Counter("oauth_refreshes", "Refresh runs, by outcome (refreshed, not_needed, failed, "
                    "rate_limited, needs_reauth, stale, lock_busy, deferred…).", ["outcome"])
REFRESH_LATENCY = Histogram("oauth_refresh_duration_seconds", "Time of one refresh run, provider call included.",
                            buckets=LATENCY_BUCKETS)
EXCHANGES = Counter("oauth_exchanges", "Code exchanges, by outcome (succeeded, failed).", ["outcome"])
PROVIDER_CALLS = Counter("oauth_provider_calls", "Calls to providers' token and revocation endpoints, by host "
                         "and HTTP status (or the transport error).", ["host", "status"])
WEBHOOK_DELIVERIES = Counter("oauth_webhook_deliveries", "Webhook delivery attempts, by outcome "
                             "(delivered, failed, gave_up).", ["outcome"])
BREAKER_OPEN = Gauge("oauth_provider_breaker_open", "1 while a provider host's circuit breaker is open.", ["host"],
                     multiprocess_mode="max")


def registry() -> CollectorRegistry:
    """This process's metrics, or every web process's when counting in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(collected)
        return collected
    from prometheus_client import REGISTRY

    return REGISTRY
