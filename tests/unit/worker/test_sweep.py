"""The sweep queues each due active connection once, one message per keyset page."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from shared import refreshes
from shared.fairness import HostSlots, Line, host_of
from shared.models import Connection
from shared.queue import REFRESH_BATCH
from shared.runtime import Runtime
from tests.conftest import seed_connections
from tests.unit.worker.conftest import TokenEndpoint, connections_at
from worker.sweep import move_stalled_lines, sweep


class RecordingCelery:
    """Records the tasks the sweep sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        self.integrations: list[str] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        self.sent.append((name, args))
        self.integrations.extend(options["kwargs"].get("integrations", []))

    def queued(self) -> list[str]:
        """Every connection id queued, in order."""
        assert {name for name, _ in self.sent} <= {REFRESH_BATCH}
        return [connection_id for _, (ids,) in self.sent for connection_id in ids]


def test_only_due_active_connections_are_queued_across_batches(memory_runtime: Runtime) -> None:
    due = seed_connections(memory_runtime, [-30, 10, 100, 300, 590, -1, 5])
    seed_connections(memory_runtime, [700, 3000, None])  # not due
    seed_connections(memory_runtime, [10, -10], status="needs_reauth")
    seed_connections(memory_runtime, [10, -10], status="revoked")
    celery = RecordingCelery()
    assert sweep(memory_runtime, celery, batch=3) == len(due)  # type: ignore[arg-type]
    assert sorted(celery.queued()) == sorted(due)
    assert len(celery.sent) == 3, "one message per page: 3 + 3 + 1"
    with memory_runtime.db.session() as session:
        integration_of = dict(session.execute(select(Connection.id, Connection.integration_id)).all())
    assert celery.integrations == [integration_of[cid] for cid in celery.queued()], "each with its integration"


def test_a_connection_already_queued_is_not_queued_again(memory_runtime: Runtime) -> None:
    first, second = seed_connections(memory_runtime, [10, 20])
    refreshes.claim(memory_runtime.redis, [first])
    celery = RecordingCelery()
    assert sweep(memory_runtime, celery) == 1  # type: ignore[arg-type]
    assert celery.queued() == [second]
    assert sweep(memory_runtime, celery) == 0  # type: ignore[arg-type]


def test_short_lived_tokens_are_due_at_half_their_lifetime(memory_runtime: Runtime) -> None:
    past_half, before_half = seed_connections(memory_runtime, [40, 60], lifetime=100)
    celery = RecordingCelery()
    sweep(memory_runtime, celery)  # type: ignore[arg-type]
    assert celery.queued() == [past_half]


def test_a_line_that_stopped_moving_is_taken_from_as_far_as_its_host_has_free_slots(
        worker_runtime: Runtime, endpoint: TokenEndpoint) -> None:
    rt, host = worker_runtime, host_of(endpoint.url)  # 4 calls per host
    ids = connections_at(rt, endpoint.url, count=6)
    line = Line(rt.redis, stalled_seconds=0.2)
    line.join(host, ids, breaker=True)
    HostSlots(rt.redis, limit=4, lease_seconds=30).acquire(host, 1)  # held by a worker that died
    celery = RecordingCelery()
    assert move_stalled_lines(rt, celery, stalled_seconds=0.2) == 0, "a line that just started is moving"  # type: ignore[arg-type]
    time.sleep(0.3)
    assert move_stalled_lines(rt, celery, stalled_seconds=0.2) == 3  # type: ignore[arg-type]
    assert celery.sent == [(REFRESH_BATCH, [ids[:3]])]
    assert move_stalled_lines(rt, celery, stalled_seconds=0.2) == 0, "it moved just now"  # type: ignore[arg-type]
    assert line.take(host, 10)[0].connection_ids == ids[3:]
