"""The worker's own single flight: the Redis lock `refresh:{id}`, without the queued marker.

Duplicate `refresh_connection` messages for one connection (a redelivery, a second
sweep, a retry) reach the workers without passing `shared.refreshes.claim`; only the
lock then keeps them from calling the provider twice."""
from __future__ import annotations

import re

import pytest

from shared.queue import REFRESH_CONNECTION
from shared.tokens import refresh_mark
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def _task_lines(stack: Stack, task_id: str) -> list[str]:
    """The workers' log lines about one task."""
    workers = "".join(p.output() for p in stack.processes if p.name.startswith("w"))
    return [line for line in workers.splitlines() if f"{REFRESH_CONNECTION}[{task_id}]" in line]


def _ended_with(stack: Stack, task_id: str) -> str | None:
    """The value a task returned, once the worker logged its success."""
    for line in _task_lines(stack, task_id):
        found = re.search(r"succeeded in [0-9.]+s: '(\w+)'", line)
        if found:
            return found.group(1)
    return None


def test_two_refresh_tasks_for_one_connection_make_one_provider_call_under_the_lock(stack: Stack) -> None:
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    before = stack.row(connection_id)
    stack.knobs(client["client_id"], latency_ms=2000)
    seen = refresh_mark(before)

    # Both bypass the marker, as duplicate messages would, and run at once on two workers.
    tasks = [stack.runtime.celery.send_task(REFRESH_CONNECTION, args=[connection_id], kwargs={"seen": seen})
             for _ in range(2)]
    wait_for(lambda: stack.provider_refreshes(client["client_id"]) >= 1, what="a call to reach the provider")
    # The provider holds its answer for 2 s: the caller holds the lock meanwhile.
    lock = f"refresh:{connection_id}"
    assert stack.runtime.redis.exists(lock), "the provider is called under the connection's lock"
    assert stack.runtime.redis.pttl(lock) > 0, "the lock has a TTL"

    outcomes = wait_for(lambda: all(_ended_with(stack, t.id) for t in tasks) and
                        sorted(_ended_with(stack, t.id) or "" for t in tasks),
                        timeout=60, interval=0.2, what="both tasks to end")
    assert outcomes == ["not_needed", "refreshed"]
    assert stack.provider_refreshes(client["client_id"]) == 1
    (loser,) = [t for t in tasks if _ended_with(stack, t.id) == "not_needed"]
    assert any(" retry: " in line for line in _task_lines(stack, loser.id)), "the loser retried on the busy lock"
    assert stack.row(connection_id).version == before.version + 1
    assert not stack.runtime.redis.exists(lock), "released when the refresh ended"
    assert tenant.events(connection_id) == ["created", "refreshed"]
