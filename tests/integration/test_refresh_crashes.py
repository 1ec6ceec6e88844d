"""Refresh under lost locks and killed workers: the fenced write and redelivery."""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from shared.queue import REFRESH_CONNECTION
from shared.tokens import refresh_mark
from tests.integration.conftest import StackFactory
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def _send_refresh(stack: Stack, connection_id: str) -> None:
    """Queue a forced refresh directly, as a duplicate or redelivered task would arrive."""
    seen = refresh_mark(stack.row(connection_id))
    stack.runtime.celery.send_task(REFRESH_CONNECTION, args=[connection_id], kwargs={"seen": seen})


@pytest.fixture(scope="module")
def short_lock_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """A refresh lock (1 s) shorter than the provider's answer: a misconfiguration the fence must survive."""
    stack = stack_factory(REFRESH_LOCK_SECONDS="1", HTTP_TIMEOUT_SECONDS="10")
    yield stack
    stack.stop_all()


def test_a_writer_that_lost_its_lock_is_fenced_off_and_no_update_is_lost(short_lock_stack: Stack) -> None:
    stack = short_lock_stack
    tenant = stack.tenant()
    client, connection_id = tenant.connected()
    before = stack.row(connection_id)
    stack.knobs(client["client_id"], latency_ms=3000, rotate_refresh_tokens=False)

    started = time.time()
    _send_refresh(stack, connection_id)  # A: slow, its lock expires while it waits
    wait_for(lambda: stack.provider_refreshes(client["client_id"]) == 1, what="A's call to reach the provider")
    stack.knobs(client["client_id"], latency_ms=0, rotate_refresh_tokens=False)
    wait_for(lambda: not stack.runtime.redis.exists(f"refresh:{connection_id}"), what="A's lock to expire")
    _send_refresh(stack, connection_id)  # B: takes the free lock and writes first
    wait_for(lambda: stack.row(connection_id).version == before.version + 1, what="B's write")
    after_b = stack.row(connection_id)
    wait_for(lambda: stack.sandbox_stats(client["client_id"])["refresh_success"] == 2, timeout=10,
             what="A's provider answer")
    time.sleep(0.5)  # A writes (or tries to) right after its answer

    final = stack.row(connection_id)
    assert final.version == before.version + 1, "A's stale write must be rejected"
    assert final.access_token_enc == after_b.access_token_enc, "B's update must survive"
    # B's token was issued within ~1.5 s, A's after 3 s: the stored one is B's.
    stored = stack.runtime.cipher.decrypt(final.access_token_enc)
    assert stack.introspect(client, stored)["exp"] < started + 2.5 + 3600
    assert tenant.events(connection_id) == ["created", "refreshed"]
    assert any("lost its lock" in p.output() for p in stack.processes)


@pytest.fixture(scope="module")
def redelivery_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """One worker to kill; a visibility timeout short enough to see the redelivery in a test."""
    stack = stack_factory(workers=1, HTTP_TIMEOUT_SECONDS="6", REFRESH_LOCK_SECONDS="7",
                          TASK_TIME_LIMIT_SECONDS="8", BROKER_VISIBILITY_TIMEOUT_SECONDS="10")
    yield stack
    stack.stop_all()


def test_a_worker_killed_mid_refresh_has_its_task_redelivered(redelivery_stack: Stack) -> None:
    """Two connections are being refreshed when their worker is SIGKILLed.

    - `untouched`: the provider had not answered (it was still stalling, and then failed
      without rotating). The redelivered task refreshes it: active, grant intact.
    - `rotated`: the provider had already rotated the refresh token, but the answer died
      with the worker. The redelivered task presents the spent token, the provider revokes
      the grant, and the connection goes to needs_reauth with its event: visible, never silent.
    """
    stack = redelivery_stack
    tenant = stack.tenant()
    untouched_client, untouched = tenant.connected()
    rotated_client, rotated = tenant.connected()
    stack.knobs(untouched_client["client_id"], fail=["timeout"], timeout_seconds=4)
    stack.knobs(rotated_client["client_id"], latency_ms=1500)
    victim = stack.processes[-1]
    assert victim.name == "w1"

    for connection_id in (untouched, rotated):
        _send_refresh(stack, connection_id)
    wait_for(lambda: stack.provider_refreshes(untouched_client["client_id"]) == 1
             and stack.provider_refreshes(rotated_client["client_id"]) == 1, what="both calls in flight")
    victim.stop(signal.SIGKILL)
    wait_for(lambda: stack.sandbox_stats(rotated_client["client_id"])["refresh_success"] == 1,
             what="the provider to rotate the refresh token after the worker died")

    stack.start_worker("rescuer")
    wait_for(lambda: stack.row(untouched).version > 1 and stack.row(rotated).status == "needs_reauth",
             timeout=60, interval=0.5, what="redelivery of both tasks")

    assert stack.row(untouched).status == "active"
    assert stack.provider_refreshes(untouched_client["client_id"]) == 2
    assert stack.sandbox_stats(untouched_client["client_id"])["grants_revoked"] == 0
    assert tenant.events(untouched) == ["created", "refreshed"]
    token = tenant.call("GET", f"/connections/{untouched}/token").json()["access_token"]
    assert stack.introspect(untouched_client, token)["active"] is True

    assert stack.provider_refreshes(rotated_client["client_id"]) == 2
    assert stack.sandbox_stats(rotated_client["client_id"])["grants_revoked"] == 1
    assert tenant.events(rotated) == ["created", "needs_reauth"]
    assert "invalid_grant" in stack.row(rotated).last_error
