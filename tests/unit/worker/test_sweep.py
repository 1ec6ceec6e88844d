"""The sweep queues each due active connection once, one message per keyset page."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from shared import refreshes
from shared.models import Connection
from shared.queue import REFRESH_BATCH
from shared.runtime import Runtime
from tests.conftest import seed_connections
from worker.sweep import sweep


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
        self.integrations.extend(options["kwargs"]["integrations"])

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
