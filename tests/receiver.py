"""A tenant's webhook endpoint over real HTTP on loopback, for the webhook tests."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.stack import wait_for


@dataclass
class Received:
    """One POST as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A tenant's webhook endpoint on 127.0.0.1. It records every POST and answers the
    scripted statuses in turn, then `default`; "hang" holds the request unanswered until
    the receiver is closed."""

    def __init__(self, script: list[int | str] | None = None, default: int | str = 200) -> None:
        self.script, self.default = list(script or []), default
        self.received: list[Received] = []
        self.in_flight = self.most_in_flight = 0
        self.lock, self.closing = threading.Lock(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?source=keeper"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append(Received(dict(self.headers), body, time.time()))
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    if answer == "hang":
                        receiver.closing.wait(120)
                        return
                    self.send_response(int(answer))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def wait(self, count: int, timeout: float = 20) -> list[Received]:
        """The first `count` POSTs, once they have arrived."""
        wait_for(lambda: len(self.received) >= count, timeout=timeout, what=f"{count} webhook POSTs")
        return self.received[:count]

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, received: Received) -> None:
    """The receiver's side of the contract: the signature over "<t>.<raw body>", a fresh t."""
    fields = dict(part.split("=", 1) for part in received.headers["X-Webhook-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), "bad signature"
    assert abs(int(fields["t"]) - received.at) < 60
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["X-Webhook-Id"].startswith("whd_")
