"""Beat's sweep: due connections are refreshed before they expire, with no API call,
each queued once, by one beat among several."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import StackFactory
from tests.integration.stack import BIN, Browser, Process, Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def swept(stack_factory: StackFactory) -> Iterator[Stack]:
    """A system sweeping every second, with two beat processes."""
    stack = stack_factory(REFRESH_SWEEP_SECONDS="1")
    yield stack
    stack.stop_all()


def _start_beat(stack: Stack, name: str) -> Process:
    return stack.spawn(name, [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO",
                              "--schedule", str(stack.logdir / f"{name}.schedule")])


def _sends(process: Process) -> int:
    return len(re.findall(r"Sending due task sweep-due", process.output()))


def test_due_connections_are_refreshed_before_expiry_once_each_by_one_beat(swept: Stack) -> None:
    stack = swept
    tenant = stack.tenant()
    # `due`: a 10 s token, due after 5 s; the provider then takes 2.5 s to answer,
    # during which several sweeps run and must not queue it again.
    due_client, integration = tenant.sandbox_integration()
    stack.knobs(due_client["client_id"], access_token_ttl=10)
    attempt = Browser(stack).connect(tenant.connect_url(integration["id"]))
    due = attempt["connection_id"]
    original = stack.row(due)
    assert original.lifetime_seconds == 10
    stack.knobs(due_client["client_id"], access_token_ttl=3600, latency_ms=2500)
    other = stack.tenant("other")
    fresh_client, fresh = other.connected()  # a 1 h token: not due for 50 minutes
    before_refreshes = stack.provider_refreshes(due_client["client_id"])

    beats = [_start_beat(stack, "beat1"), _start_beat(stack, "beat2")]
    wait_for(lambda: stack.row(due).version > original.version, timeout=20, interval=0.2,
             what="the sweep to refresh the due connection")
    refreshed = stack.row(due)
    assert refreshed.last_refreshed_at < original.expires_at, "refreshed before the old token expired"
    assert refreshed.lifetime_seconds == 3600
    time.sleep(2)  # more sweeps: the connection is fresh now and must stay alone

    assert stack.provider_refreshes(due_client["client_id"]) == before_refreshes + 1
    workers_log = "".join(p.output() for p in stack.processes if p.name.startswith("w"))
    assert len(re.findall(r"sweep queued [1-9]", workers_log)) == 1, "queued once while its refresh was pending"
    assert len(re.findall(r"sweep queued 0", workers_log)) >= 3, "sweeps kept running meanwhile"

    assert stack.row(fresh).version == 1
    assert stack.provider_refreshes(fresh_client["client_id"]) == 0
    assert other.events(fresh) == ["created"]

    sends = sorted(_sends(beat) for beat in beats)
    assert sends[0] == 0 and sends[1] >= 5, f"exactly one beat sweeps, got {sends}"
