"""Publishing through the broker transport (shared.broker): no Redis client is built per
message, and after a real Redis restart the web's next callback still enqueues exactly one
exchange, in the same process, with no error in between."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis
from flask.testing import FlaskClient

from devstack.local_redis import answers
from devstack.ports import free_port
from shared import migrate
from shared.queue import EXCHANGE_CODE, INTERACTIVE_QUEUE, build_celery
from shared.runtime import Runtime, build_runtime
from shared.tenants import create_tenant
from tests.conftest import make_settings
from tests.integration import leaks
from tests.integration.stack import wait_for
from web import create_app

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to restart"),
]


class RestartableRedis:
    """A redis-server on one port, stopped and started again empty (no persistence)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: answers(self.url), timeout=10, what="redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def queued_exchanges(rt: Runtime) -> list[list[str]]:
    """The args of the exchange messages waiting in the interactive queue, oldest first."""
    found = []
    for raw in reversed(rt.redis.lrange(INTERACTIVE_QUEUE, 0, -1)):
        assert json.loads(raw)["headers"]["task"] == EXCHANGE_CODE
        found.append(json.loads(leaks.kombu_bodies(raw.decode())[0])[0])
    return found


def sign_in(client: FlaskClient, link: str) -> str:
    """Open the link, come back with a code; answers the attempt id."""
    started = client.get(urlsplit(link).path)
    assert started.status_code == 302
    state = dict(parse_qsl(urlsplit(started.headers["Location"]).query))["state"]
    back = client.get("/oauth/callback", query_string={"state": state, "code": "the-code-0123456789"})
    assert back.status_code == 303, back.get_data(as_text=True)
    return back.headers["Location"].rsplit("/", 1)[1]


def test_a_callback_after_a_redis_restart_still_enqueues_its_exchange(redis_server: RestartableRedis,
                                                                      tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'oauth.db'}"
    migrate.upgrade(database_url)
    rt = build_runtime(make_settings(redis_url=redis_server.url, database_url=database_url,
                                     browser_rate_limit="1000/minute"))
    client = create_app(runtime_=rt).test_client()
    with rt.db.session() as session:
        _, api_key = create_tenant(session, "acme")
    api = {"Authorization": f"Bearer {api_key}"}
    integration = client.post("/api/v1/integrations", headers=api, json={
        "provider": "oauth2", "client_id": "client-1", "client_secret": "client-secret-value-0123456789",
        "scopes": ["contact:read"], "authorize_url": "https://idp.example/oauth/authorize",
        "token_url": "https://idp.example/oauth/token"}).get_json()

    def link() -> str:
        answer = client.post("/api/v1/connect-sessions", headers=api,
                             json={"integration_id": integration["id"], "end_user_id": "user-1"})
        assert answer.status_code == 201
        return str(answer.get_json()["connect_url"])

    first, later_link = sign_in(client, link()), link()
    assert queued_exchanges(rt) == [[first]]

    redis_server.stop()
    redis_server.start()
    assert queued_exchanges(rt) == []  # an empty Redis: the first message went with the old one

    second = sign_in(client, later_link)
    assert queued_exchanges(rt) == [[second]]
    third = sign_in(client, link())
    assert queued_exchanges(rt) == [[second], [third]]


def test_publishing_builds_no_redis_client_per_message(redis_server: RestartableRedis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    celery = build_celery(make_settings(redis_url=redis_server.url))

    def send() -> None:
        celery.send_task(EXCHANGE_CODE, args=["att_0"], queue=INTERACTIVE_QUEUE, ignore_result=True)

    send()  # the connection, its channel and the channel's client are made once
    built: list[object] = []
    init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    for _ in range(5):
        send()
    assert built == []
    assert redis.Redis.from_url(redis_server.url).llen(INTERACTIVE_QUEUE) == 6
