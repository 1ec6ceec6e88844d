"""`flask --app web connections call`: one call through the client with a connection's stored token."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from click.testing import Result

from shared.models import Connection, Integration
from shared.runtime import Runtime
from tests.conftest import seed_connections
from tests.unit.client.conftest import Scripted
from web import create_app

ACCESS_TOKEN = "stored-access-token-0123456789"


@pytest.fixture()
def api() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def seeded(rt: Runtime, api_base_url: str | None, status: str = "active") -> str:
    (connection_id,) = seed_connections(rt, [3600], status=status)
    with rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None
        connection.access_token_enc = rt.cipher.encrypt(ACCESS_TOKEN)
        integration = session.get(Integration, connection.integration_id)
        assert integration is not None
        integration.api_base_url = api_base_url
    return connection_id


def call(rt: Runtime, *args: str) -> Result:
    return create_app(runtime_=rt).test_cli_runner().invoke(args=["connections", "call", *args])


def test_it_prints_the_status_then_the_json(memory_runtime: Runtime, api: Scripted) -> None:
    connection_id = seeded(memory_runtime, api.url + "/v2")
    api.script = [(200, {"contactId": 7, "messageId": 1}, {})]
    result = call(memory_runtime, connection_id, "post", "/contact/id:7/message", "--json",
                  '{"message": {"type": "text", "text": "hi"}}')
    assert result.exit_code == 0, result.output
    status, _, body = result.output.partition("\n")
    assert status == "200" and json.loads(body) == {"contactId": 7, "messageId": 1}
    assert api.seen == [("POST", "/v2/contact/id:7/message", f"Bearer {ACCESS_TOKEN}")]
    assert ACCESS_TOKEN not in result.output


def test_an_error_status_is_printed_and_exits_1(memory_runtime: Runtime, api: Scripted) -> None:
    connection_id = seeded(memory_runtime, api.url)
    api.script = [(404, {"code": 404, "message": "contact not found"}, {})]
    result = call(memory_runtime, connection_id, "GET", "/contact/id:1")
    assert result.exit_code == 1 and result.output.startswith("404\n")


@pytest.mark.parametrize(("status", "expected"), [("needs_reauth", "needs_reauth"), ("revoked", "revoked")])
def test_a_connection_that_gives_no_token_says_why(memory_runtime: Runtime, api: Scripted, status: str,
                                                   expected: str) -> None:
    result = call(memory_runtime, seeded(memory_runtime, api.url, status=status), "GET", "/space/user")
    assert result.exit_code == 1 and expected in result.output and api.seen == []


def test_bad_arguments_are_refused_before_any_call(memory_runtime: Runtime, api: Scripted) -> None:
    connection_id = seeded(memory_runtime, api.url)
    assert "connection not found" in call(memory_runtime, "conn_unknown", "GET", "/space/user").output
    assert "not JSON" in call(memory_runtime, connection_id, "POST", "/contact/list", "--json", "{").output
    assert call(memory_runtime, connection_id, "GET", f"{api.url}/space/user").exit_code == 1
    assert "api_base_url" in call(memory_runtime, seeded(memory_runtime, None), "GET", "/space/user").output
    assert api.seen == []
