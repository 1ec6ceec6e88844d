"""Operations endpoints: liveness, readiness and the metrics of the service's state."""
from __future__ import annotations

import fakeredis
from prometheus_client.parser import text_string_to_metric_families

from shared.queue import DEFAULT_QUEUE, WEBHOOK_QUEUE
from shared.runtime import Runtime
from tests.conftest import seed_connections
from web import create_app


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_connections_the_backlog_and_the_queues(memory_runtime: Runtime) -> None:
    seed_connections(memory_runtime, [-10, 30, 5000, None])
    seed_connections(memory_runtime, [10], status="needs_reauth")
    memory_runtime.redis.rpush(DEFAULT_QUEUE, "m1", "m2")
    memory_runtime.redis.rpush(WEBHOOK_QUEUE, "m3")
    response = create_app(runtime_=memory_runtime).test_client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = _samples(response.get_data(as_text=True))
    assert samples[("oauth_connections", (("status", "active"),))] == 4
    assert samples[("oauth_connections", (("status", "needs_reauth"),))] == 1
    assert samples[("oauth_connections", (("status", "revoked"),))] == 0
    assert samples[("oauth_connections_expiring", ())] == 2
    assert samples[("oauth_connections_failing", ())] == 0
    assert samples[("oauth_queue_length", (("queue", "celery"),))] == 2
    assert samples[("oauth_queue_length", (("queue", "interactive"),))] == 0
    assert samples[("oauth_queue_length", (("queue", "webhooks"),))] == 1
    assert samples[("oauth_webhook_deliveries_pending", ())] == 0
    assert any(name.startswith("process_") or name.startswith("python_") for name, _ in samples)


def test_readiness_follows_redis(memory_runtime: Runtime) -> None:
    client = create_app(runtime_=memory_runtime).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").get_json() == {"ready": True, "checks": {"database": "ok", "redis": "ok"}}
    server = fakeredis.FakeServer()
    server.connected = False
    memory_runtime.redis = fakeredis.FakeRedis(server=server)
    down = create_app(runtime_=memory_runtime).test_client().get("/readyz")
    assert down.status_code == 503 and down.get_json()["checks"]["redis"] != "ok"
