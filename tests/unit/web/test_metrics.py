"""/metrics: counted requests, state gauges shared through Redis, and the bearer token."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shared.runtime import Runtime
from tests.conftest import make_settings, seed_connections
from web import create_app
from web.metrics import STATE_KEY


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(runtime: Runtime, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = create_app(runtime_=runtime).test_client().get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    return samples(response.get_data(as_text=True))


def active(figures: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return figures[("oauth_connections", (("status", "active"),))]


def test_requests_are_counted_by_route_template_and_status(memory_runtime: Runtime) -> None:
    client = create_app(runtime_=memory_runtime).test_client()
    key = ("oauth_http_requests_total", (("method", "GET"), ("route", "/connect/attempts/<attempt_id>"),
                                          ("status", "404")))
    before = scrape(memory_runtime).get(key, 0)
    for _ in range(3):
        client.get("/connect/attempts/att_missing", headers={"Accept": "application/json"})
    after = scrape(memory_runtime)
    assert after[key] - before == 3
    assert not any("att_missing" in str(labels) for _, labels in after)


def test_state_figures_are_computed_once_per_period_and_shared(memory_runtime: Runtime) -> None:
    seed_connections(memory_runtime, [3600, 3600])
    assert active(scrape(memory_runtime)) == 2
    seed_connections(memory_runtime, [3600])
    assert active(scrape(memory_runtime)) == 2  # the shared figures, not a new count
    memory_runtime.redis.delete(STATE_KEY)
    memory_runtime.redis.delete(f"{STATE_KEY}:computing")
    assert active(scrape(memory_runtime)) == 3


def test_a_scrape_while_another_process_computes_runs_no_count(memory_runtime: Runtime) -> None:
    memory_runtime.redis.set(f"{STATE_KEY}:computing", 1)
    figures = scrape(memory_runtime)
    assert not any(name == "oauth_connections" for name, _ in figures)
    assert ("oauth_queue_length", (("queue", "celery"),)) in figures


def test_metrics_token_is_required_when_set(memory_runtime: Runtime) -> None:
    memory_runtime.settings = make_settings(metrics_token="scrape-token-0123456789")
    client = create_app(runtime_=memory_runtime).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"}).status_code == 200
