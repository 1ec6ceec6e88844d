"""The worker's refresh lock: two refreshes of one connection, sent straight to the
workers (no marker to stop the second), make one provider call."""
from __future__ import annotations

import re
import time

import pytest

from shared.queue import REFRESH_CONNECTION
from shared.tokens import refresh_mark
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def test_two_refresh_tasks_for_one_connection_make_one_provider_call(stack: Stack) -> None:
    tenant = stack.tenant("locked")
    client, connection_id = tenant.connected()
    before = stack.row(connection_id)
    stack.knobs(client["client_id"], latency_ms=2000)
    seen = refresh_mark(before)
    workers_log = lambda: "".join(p.output() for p in stack.processes if p.name.startswith("w"))  # noqa: E731
    not_needed_before = len(re.findall(r"succeeded in [0-9.]+s: 'not_needed'", workers_log()))

    for _ in range(2):
        stack.runtime.celery.send_task(REFRESH_CONNECTION, args=[connection_id], kwargs={"seen": seen})
    wait_for(lambda: stack.provider_refreshes(client["client_id"]) == 1, what="the first call to reach the provider")
    assert stack.runtime.redis.exists(f"refresh:{connection_id}"), "the lock is held during the call"
    wait_for(lambda: stack.row(connection_id).version == before.version + 1, what="the refresh to land")
    wait_for(lambda: len(re.findall(r"succeeded in [0-9.]+s: 'not_needed'", workers_log())) == not_needed_before + 1, timeout=30,
             what="the second task to find the connection refreshed")
    time.sleep(0.5)

    assert stack.provider_refreshes(client["client_id"]) == 1
    assert stack.row(connection_id).version == before.version + 1
    assert tenant.events(connection_id) == ["created", "refreshed"]
    stack.knobs(client["client_id"], latency_ms=0)
