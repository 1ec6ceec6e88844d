"""The sweep queues each due active connection once, in keyset batches."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from shared import refreshes
from shared.models import Connection, Integration, Tenant, utcnow
from shared.queue import REFRESH_CONNECTION
from shared.runtime import Runtime
from worker.refresh import sweep


class RecordingCelery:
    """Records the tasks the sweep sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        yield object()

    def send_task(self, name: str, args: list[Any], **_: Any) -> None:
        self.sent.append((name, args))


def _connections(rt: Runtime, expiring_in: list[int | None], status: str = "active",
                 lifetime: int = 3600) -> list[str]:
    now = utcnow()
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=f"h{len(expiring_in)}{status}")
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c", client_secret_enc="x",
                                  scopes=[], authorize_url="https://a", token_url="https://t")
        session.add(integration)
        session.flush()
        rows = [Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                           status=status, lifetime_seconds=lifetime,
                           expires_at=now + timedelta(seconds=s) if s is not None else None) for s in expiring_in]
        session.add_all(rows)
    return [row.id for row in rows]


def test_only_due_active_connections_are_queued_across_batches(memory_runtime: Runtime) -> None:
    due = _connections(memory_runtime, [-30, 10, 100, 300, 590, -1, 5])
    _connections(memory_runtime, [700, 3000, None])  # not due
    _connections(memory_runtime, [10, -10], status="needs_reauth")
    celery = RecordingCelery()
    assert sweep(memory_runtime, celery, batch=3) == len(due)  # type: ignore[arg-type]
    assert sorted(args[0] for _, args in celery.sent) == sorted(due)
    assert {name for name, _ in celery.sent} == {REFRESH_CONNECTION}


def test_a_connection_already_queued_is_not_queued_again(memory_runtime: Runtime) -> None:
    first, second = _connections(memory_runtime, [10, 20])
    refreshes.claim(memory_runtime.redis, [first])
    celery = RecordingCelery()
    assert sweep(memory_runtime, celery) == 1  # type: ignore[arg-type]
    assert celery.sent == [(REFRESH_CONNECTION, [second])]
    assert sweep(memory_runtime, celery) == 0  # type: ignore[arg-type]


def test_short_lived_tokens_are_due_at_half_their_lifetime(memory_runtime: Runtime) -> None:
    past_half, before_half = _connections(memory_runtime, [40, 60], lifetime=100)
    celery = RecordingCelery()
    sweep(memory_runtime, celery)  # type: ignore[arg-type]
    assert [args[0] for _, args in celery.sent] == [past_half]
