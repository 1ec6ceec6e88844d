"""Fixtures of the worker's unit tests: a token endpoint served on loopback whose
answers each test scripts, and connections whose integration points at it."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import fakeredis
import pytest
from sqlalchemy import select

from shared.crypto import Cipher
from shared.db import Database
from shared.models import Base, Connection, Event, Integration, Tenant, new_id, utcnow
from shared.runtime import Runtime
from tests.conftest import make_settings


@dataclass
class Reply:
    """One scripted answer: status, JSON body (or raw bytes), headers, and a delay."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"access_token": "new-at", "token_type": "Bearer",
                                                "expires_in": 3600, "refresh_token": "new-rt"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class TokenEndpoint:
    """A token endpoint on loopback. Each POST takes the next scripted reply (or the
    default one); `hold()` makes calls wait until `release()`."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.default = Reply()
        self.forms: list[dict[str, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length", 0))
                with endpoint.lock:
                    endpoint.forms.append(parse_qs(self.rfile.read(length).decode()))
                    reply = endpoint.replies.pop(0) if endpoint.replies else endpoint.default
                    endpoint.in_flight += 1
                    endpoint.most_in_flight = max(endpoint.most_in_flight, endpoint.in_flight)
                try:
                    endpoint.gate.wait(30)
                    time.sleep(reply.delay)
                    body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to answer
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def grants(self) -> list[str]:
        """The refresh tokens presented, in order."""
        return [form["refresh_token"][0] for form in self.forms if "refresh_token" in form]

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Calls wait inside the endpoint until the block ends."""
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    """A scripted token endpoint on loopback."""
    served = TokenEndpoint()
    yield served
    served.close()


@pytest.fixture
def worker_runtime(tmp_path: Path) -> Runtime:
    """A worker's runtime over a SQLite file (its threads share it) and fakeredis, with
    short timeouts (HTTP 1 s, breaker 1 s) and room for 4 calls per host."""
    settings = make_settings(http_timeout_seconds=1, provider_concurrency=4, provider_breaker_seconds=1)
    db = Database(f"sqlite:///{tmp_path / 'worker.db'}")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys))


def connections_at(rt: Runtime, token_url: str, count: int = 1, expires_in: int = 60,
                   refresh_token: str | None = "old-rt", **fields: Any) -> list[str]:
    """Active connections of a new tenant whose integration posts to `token_url`, due now
    (expiring in `expires_in` s of a 1 h lifetime), each with its own refresh token."""
    now = utcnow()
    with rt.db.session() as session:
        tenant = Tenant(name="t", api_key_hash=new_id("hash"))
        session.add(tenant)
        session.flush()
        integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="cid",
                                  client_secret_enc=rt.cipher.encrypt("secret"), scopes=["a"],
                                  authorize_url="https://idp.example/a", token_url=token_url)
        session.add(integration)
        session.flush()
        rows = [Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id=f"u{n}", scopes=["a"],
                           access_token_enc=rt.cipher.encrypt(f"old-at-{n}"),
                           refresh_token_enc=rt.cipher.encrypt(f"{refresh_token}-{n}") if refresh_token else None,
                           lifetime_seconds=3600, expires_at=now + timedelta(seconds=expires_in), **fields)
                for n in range(count)]
        session.add_all(rows)
    return [row.id for row in rows]


def stored(rt: Runtime, connection_id: str) -> Connection:
    """The connection as stored now."""
    with rt.db.session() as session:
        row = session.get(Connection, connection_id)
    assert row is not None
    return row


def history(rt: Runtime, connection_id: str) -> list[str]:
    """The connection's event types, oldest first."""
    with rt.db.session() as session:
        return list(session.scalars(select(Event.type).where(Event.connection_id == connection_id)
                                    .order_by(Event.created_at, Event.id)))
