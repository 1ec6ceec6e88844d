"""Metrics over a running system: the web's counts summed over its gunicorn processes,
and each worker's own figures on WORKER_METRICS_PORT."""
from __future__ import annotations

import pytest
import requests

from devstack.ports import free_port
from tests.integration.conftest import StackFactory
from tests.integration.stack import wait_for
from tests.unit.web.test_metrics import samples

pytestmark = pytest.mark.integration

METRICS_TOKEN = "metrics-token-0123456789abcdef"


def test_web_counts_are_summed_over_processes_and_workers_count_refreshes(stack_factory: StackFactory) -> None:
    stack = stack_factory(workers=0, METRICS_TOKEN=METRICS_TOKEN)
    port = free_port()
    stack.start_worker("w1", env={"WORKER_METRICS_PORT": str(port)})
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    key = ("oauth_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))

    def web_figures() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = requests.get(f"{stack.base_url}/metrics", headers=auth, timeout=5)
        assert response.status_code == 200, response.text
        return samples(response.text)

    assert requests.get(f"{stack.base_url}/metrics", timeout=5).status_code == 401
    before = web_figures().get(key, 0)
    # New connections each time, so the two gunicorn processes share the requests.
    for _ in range(40):
        assert requests.get(f"{stack.base_url}/healthz", headers={"Connection": "close"}, timeout=5).ok
    assert web_figures()[key] - before == 40

    tenant = stack.tenant("metrics")
    client, connection_id = tenant.connected()
    assert tenant.call("POST", f"/connections/{connection_id}/refresh").status_code == 200

    def refreshed() -> float:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return samples(text).get(("oauth_refreshes_total", (("outcome", "refreshed"),)), 0)

    assert wait_for(refreshed, timeout=10, what="the worker to count the refresh") == 1
    assert stack.provider_refreshes(client["client_id"]) == 1
