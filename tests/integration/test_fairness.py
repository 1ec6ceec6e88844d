"""Fairness between tenants: a stalling token endpoint holds no more than its host's
call slots, its breaker opens, and another tenant's refreshes go on. Hosts are keyed by
host and port; the two tenants' token endpoints are two local servers on two ports."""
from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.models import Connection, Integration, Tenant, new_id, utcnow
from tests.integration.conftest import StackFactory
from tests.integration.stack import BIN, Stack, wait_for

pytestmark = pytest.mark.integration

TOKEN = json.dumps({"access_token": "fresh", "token_type": "Bearer", "expires_in": 3600}).encode()


class Endpoint:
    """A token endpoint that stalls every call while `stalling` is set, and counts."""

    def __init__(self) -> None:
        self.stalling = threading.Event()
        self.calls = self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    endpoint.calls += 1
                    endpoint.in_flight += 1
                    endpoint.most_in_flight = max(endpoint.most_in_flight, endpoint.in_flight)
                try:
                    deadline = time.monotonic() + 60
                    while endpoint.stalling.is_set() and time.monotonic() < deadline:
                        if self._caller_gone():
                            return  # the worker gave up: its call is no longer in flight
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(TOKEN)))
                    self.end_headers()
                    self.wfile.write(TOKEN)
                except OSError:
                    pass  # the worker gave up waiting
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

            def _caller_gone(self) -> bool:
                """Wait a moment for the caller; True once it has closed its end."""
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stalling.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[tuple[Endpoint, Endpoint]]:
    stalled, healthy = Endpoint(), Endpoint()
    yield stalled, healthy
    stalled.close()
    healthy.close()


def _seed(stack: Stack, token_url: str, count: int, due_in: float) -> list[str]:
    """`count` connections of a new tenant at `token_url`, due `due_in` seconds from now."""
    rt = stack.runtime
    expires_at = utcnow() + timedelta(seconds=rt.settings.refresh_margin_seconds + due_in)
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=new_id("hash"))
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="cid",
                                  client_secret_enc=rt.cipher.encrypt("secret"), scopes=[],
                                  authorize_url="https://idp.example/a", token_url=token_url)
        session.add(integration)
        session.flush()
        rows = [Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id=f"u{n}", scopes=[],
                           access_token_enc=rt.cipher.encrypt("old"), refresh_token_enc=rt.cipher.encrypt(f"rt{n}"),
                           lifetime_seconds=3600, expires_at=expires_at) for n in range(count)]
        session.add_all(rows)
    return [row.id for row in rows]


@pytest.fixture(scope="module")
def fair_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """Two workers of 8 threads, a sweep every second, 3 s HTTP timeouts, breaker open 4 s."""
    stack = stack_factory(REFRESH_SWEEP_SECONDS="1", ALLOW_PRIVATE_PROVIDER_URLS="1", HTTP_TIMEOUT_SECONDS="3",
                          PROVIDER_CONCURRENCY="8", PROVIDER_BREAKER_SECONDS="4")
    yield stack
    stack.stop_all()


def test_a_stalling_token_endpoint_delays_another_tenants_refreshes_by_a_few_seconds_at_most(
        fair_stack: Stack, endpoints: tuple[Endpoint, Endpoint]) -> None:
    stack = fair_stack
    stalled, healthy = endpoints
    stalled.stalling.set()
    stalled_ids = _seed(stack, stalled.url, 500, due_in=-1)
    # Due once the stalled tenant's first calls have timed out and been retried: without
    # slots, its 500 retries would hold every worker thread by then.
    (other,) = _seed(stack, healthy.url, 1, due_in=8)
    due_at = time.time() + 8
    stack.spawn("beat", [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO",
                         "--schedule", str(stack.logdir / "beat.schedule")])

    wait_for(lambda: stack.row(other).version == 2, timeout=60, interval=0.1, what="the other tenant's refresh")
    delay = time.time() - due_at
    assert delay < 4, f"the other tenant waited {delay:.1f} s"
    breaker = f"breaker:127.0.0.1:{stalled.server.server_address[1]}"
    wait_for(lambda: stack.runtime.redis.hget(breaker, "open_until"), timeout=30, what="the breaker to open")
    calls = stalled.calls
    time.sleep(2)  # less than the breaker's 4 s: no probe yet
    # A call admitted just before the breaker opened may still arrive; nothing else goes.
    assert stalled.calls <= calls + 1, "an open breaker sends nothing"
    assert stalled.most_in_flight <= 8, "never more calls in flight than the host's slots"

    stalled.stalling.clear()  # the endpoint recovers: a probe succeeds and the rest follow
    wait_for(lambda: _refreshed(stack, stalled_ids) == len(stalled_ids), timeout=120, interval=1,
             what="the stalled tenant's connections to be refreshed once its endpoint answers")
    assert stalled.most_in_flight <= 8
    assert not stack.runtime.redis.exists(breaker), "the probe's success closed it"


def _refreshed(stack: Stack, ids: list[str]) -> int:
    with stack.runtime.db.session() as session:
        return session.query(Connection).filter(Connection.id.in_(ids), Connection.version > 1,
                                                Connection.access_token_enc.is_not(None),
                                                Connection.last_refreshed_at.is_not(None)).count()


def test_a_line_whose_slots_died_with_their_worker_moves_once_their_leases_expire(
        stack_factory: StackFactory, endpoints: tuple[Endpoint, Endpoint]) -> None:
    """The worker calling a host is killed holding all 4 of its slots, with 8 connections
    waiting in the host's line for them: nothing gives the slots back, so the sweep takes
    from the line once the leases have expired and the line has not moved for 5 s."""
    stack = stack_factory(workers=1, REFRESH_SWEEP_SECONDS="1", ALLOW_PRIVATE_PROVIDER_URLS="1",
                          HTTP_TIMEOUT_SECONDS="2", PROVIDER_CONCURRENCY="4")  # leases of 2 × 2 + 5 s
    stalled, _ = endpoints
    stalled.stalling.set()
    ids = _seed(stack, stalled.url, 12, due_in=-1)
    line = f"provider-line:127.0.0.1:{stalled.server.server_address[1]}"
    victim = stack.processes[-1]
    stack.spawn("beat", [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO",
                         "--schedule", str(stack.logdir / "beat.schedule")])
    wait_for(lambda: stalled.in_flight == 4 and stack.runtime.redis.llen(line) == 8, timeout=30, interval=0.05,
             what="4 calls in flight and 8 connections in line")
    victim.stop(signal.SIGKILL)
    stalled.stalling.clear()
    killed_at = time.time()
    rescuer = stack.start_worker("rescuer")
    wait_for(lambda: _refreshed(stack, ids) >= 8, timeout=60, interval=0.5, what="the line's 8 to be refreshed")
    assert time.time() - killed_at >= 5, "not before the leases expired and the line stalled"
    assert "had not moved" in rescuer.output()
    assert stalled.most_in_flight <= 4
