"""Refresh under lost locks and killed workers: the fenced write and redelivery."""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from shared.queue import REFRESH_CONNECTION
from shared.tokens import refresh_mark
from tests.integration.conftest import StackFactory
from tests.integration.listener import Listener, Reply
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
    lock = f"refresh:{connection_id}"
    wait_for(lambda: stack.runtime.redis.exists(lock), interval=0.01, what="A to take the lock")
    wait_for(lambda: stack.provider_refreshes(client["client_id"]) == 1, what="A's call to reach the provider")
    stack.knobs(client["client_id"], latency_ms=0, rotate_refresh_tokens=False)
    wait_for(lambda: not stack.runtime.redis.exists(lock), what="A's lock to expire")
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
    """One worker to kill; a visibility timeout short enough to see the redelivery in a
    test; loopback listeners stand in for providers that hold their answers."""
    stack = stack_factory(workers=1, ALLOW_PRIVATE_PROVIDER_URLS="1", HTTP_TIMEOUT_SECONDS="6",
                          REFRESH_LOCK_SECONDS="7", TASK_TIME_LIMIT_SECONDS="8",
                          BROKER_VISIBILITY_TIMEOUT_SECONDS="10")
    yield stack
    stack.stop_all()


def test_a_worker_killed_mid_refresh_has_its_task_redelivered(redelivery_stack: Stack) -> None:
    """Two connections are being refreshed when their worker is SIGKILLed, each provider
    holding its answer until the worker is dead.

    - `untouched`: the provider's answer was a failure (nothing rotated). The redelivered
      task refreshes it: active, with the new token.
    - `rotated`: the provider had rotated the refresh token, but the answer died with the
      worker. The redelivered task presents the spent token, meets invalid_grant, and the
      connection goes to needs_reauth with its event: visible, never silent.
    """
    stack = redelivery_stack
    tenant = stack.tenant()
    fresh = {"access_token": "access-" + "n" * 25, "refresh_token": "refresh-" + "n" * 24, "expires_in": 3600}
    with Listener(Reply.json({"error": "temporarily_unavailable"}, 503), Reply.json(fresh)) as untouched_provider, \
            Listener(Reply.json(fresh), Reply.json({"error": "invalid_grant"}, 400)) as rotated_provider:
        providers = (untouched_provider, rotated_provider)
        untouched, rotated = (tenant.stored_connection(tenant.stored_integration(f"{p.url}/token"))
                              for p in providers)
        victim = stack.processes[-1]
        assert victim.name == "w1"
        for provider in providers:
            provider.release.clear()
        for connection_id in (untouched, rotated):
            _send_refresh(stack, connection_id)
        wait_for(lambda: all(p.received for p in providers), what="both calls held by their providers")
        victim.stop(signal.SIGKILL)
        for provider in providers:
            provider.release.set()  # the answers go to a dead worker

        stack.start_worker("rescuer")
        wait_for(lambda: stack.row(untouched).version > 1 and stack.row(rotated).status == "needs_reauth",
                 timeout=60, interval=0.5, what="redelivery of both tasks")

        for provider in providers:
            presented = [r.form().get("refresh_token") for r in provider.received]
            assert presented == ["refresh-token-1", "refresh-token-1"], "one call, then one redelivered call"

    kept = stack.row(untouched)
    assert kept.status == "active" and kept.refresh_failures == 0 and kept.last_error is None
    assert stack.runtime.cipher.decrypt(kept.access_token_enc) == fresh["access_token"]
    assert stack.runtime.cipher.decrypt(kept.refresh_token_enc) == fresh["refresh_token"]
    assert tenant.events(untouched) == ["refreshed"]
    assert tenant.call("GET", f"/connections/{untouched}/token").json()["access_token"] == fresh["access_token"]

    assert tenant.events(rotated) == ["needs_reauth"]
    assert "invalid_grant" in stack.row(rotated).last_error
