"""Provider calls are counted by host and by status, or by what kept them from an answer;
errors label metrics by a bounded class."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.egress import Rules
from shared.metrics import PROVIDER_CALLS, error_class
from shared.providers import ProviderError, post


class Teapot(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(418)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def count(host: str, outcome: str) -> float:
    return PROVIDER_CALLS.labels(host, outcome)._value.get()


def test_answers_and_failures_are_counted_by_host() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teapot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = Rules.for_tenant_urls(True)
    before = count("127.0.0.1", "418")
    post(f"http://127.0.0.1:{server.server_address[1]}/token", rules, {"a": "b"}, {}, timeout=5)
    server.shutdown()
    server.server_close()
    assert count("127.0.0.1", "418") == before + 1

    refused = count("127.0.0.1", "connection_error")
    with pytest.raises(ProviderError):
        post(f"http://127.0.0.1:{server.server_address[1]}/token", rules, {"a": "b"}, {}, timeout=5)
    assert count("127.0.0.1", "connection_error") == refused + 1


@pytest.mark.parametrize(("code", "status", "label"), [
    ("invalid_grant", 400, "invalid_grant"),
    ("timeout", None, "timeout"),
    ("any_code_a_provider_makes_up", 429, "http_4xx"),
    ("http_503", 503, "http_5xx"),
    ("exchange_failed", None, "other"),
    (None, None, "other"),
])
def test_an_error_labels_a_metric_by_its_class(code: str | None, status: int | None, label: str) -> None:
    assert error_class(code, status) == label
