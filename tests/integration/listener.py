"""A local HTTP server for tests: it records every request it receives and answers
each with a scripted response, or holds it until the test releases it."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class Received:
    """One request as the listener saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(errors="replace")))


@dataclass
class Reply:
    """What the listener answers."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200) -> Reply:
        return cls(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())


class Listener:
    """An HTTP server on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies) or [Reply()]  # in order; the last one repeats
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()  # answer at once unless a test clears it to hold requests
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Received(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with listener._lock:
                    reply = listener.replies[min(len(listener.received), len(listener.replies) - 1)]
                    listener.received.append(request)
                listener.release.wait(60)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, *_: Any) -> None:
                pass  # a caller that died mid-request (a killed worker) is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
