"""Beat's sweep: due connections are refreshed before they expire, with no API call,
each queued once, by one beat among several."""
from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from tests.integration.conftest import StackFactory
from tests.integration.stack import BIN, Browser, Process, Stack, wait_for
from worker.app import BEAT_LOCK_SECONDS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def swept(stack_factory: StackFactory) -> Iterator[Stack]:
    """A system sweeping every second, with two beat processes."""
    stack = stack_factory(REFRESH_SWEEP_SECONDS="1")
    yield stack
    stack.stop_all()


STAMP = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+)")


@pytest.fixture
def start_beat(swept: Stack) -> Iterator[Callable[[str], Process]]:
    """Starts beat processes (logging at DEBUG, to show a waiting one is alive); they
    are stopped when the test ends, whatever happened."""
    started: list[Process] = []

    def start(name: str) -> Process:
        process = swept.spawn(name, [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "DEBUG",
                                     "--schedule", str(swept.logdir / f"{name}.schedule")], {"LOG_LEVEL": "DEBUG"})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _send_times(process: Process) -> list[datetime]:
    """When this beat sent the sweep, from the time stamps of its log lines (JSON or text)."""
    times = []
    for line in process.output().splitlines():
        if "Sending due task sweep-due" in line:
            stamp = STAMP.search(line)
            assert stamp, f"a log line without its time: {line}"
            times.append(datetime.fromisoformat(stamp.group(1).replace(",", ".")).replace(tzinfo=None))
    return times


def _sends(process: Process) -> int:
    return len(_send_times(process))


def _waiting_for_the_lock(process: Process) -> bool:
    """Alive, started, and blocked on RedBeat's lock rather than sending."""
    log = process.output()
    return (process.popen.poll() is None and "beat: Starting..." in log and "beat: Acquiring lock" in log
            and "beat: Acquired lock" not in log)


def _sender_and_waiter(beats: list[Process]) -> tuple[Process, Process]:
    """Wait until one beat sends while the other, alive, waits; return them in that order."""
    wait_for(lambda: any(_sends(beat) >= 3 for beat in beats), timeout=30, what="a beat to send")
    sender, waiter = sorted(beats, key=_sends, reverse=True)
    assert sender.popen.poll() is None, sender.output()
    assert _waiting_for_the_lock(waiter), waiter.output()
    assert _sends(waiter) == 0
    return sender, waiter


def test_due_connections_are_refreshed_before_expiry_once_each_by_one_beat(
        swept: Stack, start_beat: Callable[[str], Process]) -> None:
    stack = swept
    # The beats sweep before the token is issued, so its 10 s run on the sweep alone and
    # not on how long two beat processes take to start on a busy machine.
    beats = [start_beat("beat1"), start_beat("beat2")]
    wait_for(lambda: any(_sends(beat) >= 1 for beat in beats), timeout=30, what="a beat to send")
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

    sender, waiter = _sender_and_waiter(beats)  # both alive: a crashed beat would also send nothing
    assert _sends(sender) >= 5 and _sends(waiter) == 0


def test_when_the_sending_beat_dies_the_other_takes_over_within_the_lock_timeout(
        swept: Stack, start_beat: Callable[[str], Process]) -> None:
    beats = [start_beat("beat-a"), start_beat("beat-b")]
    sender, waiter = _sender_and_waiter(beats)
    assert 0 < swept.runtime.redis.pttl("redbeat::lock") <= BEAT_LOCK_SECONDS * 1000

    sender.stop(signal.SIGKILL)  # no release: the lock must expire
    killed = time.monotonic()
    wait_for(lambda: _sends(waiter) >= 1, timeout=BEAT_LOCK_SECONDS + 30, interval=0.2,
             what="the waiting beat to take over")
    took = time.monotonic() - killed
    assert took <= BEAT_LOCK_SECONDS + 5, f"took over after {took:.1f}s"
    wait_for(lambda: _sends(waiter) >= 3, timeout=20, what="the new sender to keep sending")
    assert max(_send_times(sender)) < min(_send_times(waiter)), "the two beats never sent at the same time"
