"""The browser flow's own rate limit (web.browser_limits) over fakeredis: fixed windows per
limit of the spec, Retry-After until every breached window resets, and the callback counted
in the round trip that takes its state."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import fakeredis
import pytest

from shared.crypto import Cipher
from shared.db import Database
from shared.models import Base
from shared.runtime import Runtime
from tests.conftest import make_settings
from tests.unit.web.test_connect import CODE, attempts, make_flow
from web.browser_limits import AddressLimit

HOUR = 3600.0


def hit(limit: AddressLimit, client: fakeredis.FakeRedis, now: float, address: str = "10.0.0.1") -> int | None:
    pipe = client.pipeline(transaction=False)
    limit.count(pipe, address, now)
    return limit.wait(pipe.execute(), now)


def test_each_limit_of_the_spec_is_a_window_of_its_own() -> None:
    client = fakeredis.FakeRedis()
    limit = AddressLimit("2/minute;3/hour")
    start = 100 * HOUR + 10  # 10 s into a minute and into an hour
    assert [hit(limit, client, start + n) for n in range(2)] == [None, None]
    assert hit(limit, client, start + 5) == 45  # the minute's window ends 45 s later
    assert hit(limit, client, start + 5, address="10.0.0.2") is None  # another address, its own budget
    # The next minute: the minute allows again, but the hour has had its 3 (refused ones count too).
    assert hit(limit, client, start + 60) == 3600 - 70
    for key in client.scan_iter("ratelimit:browser:*"):
        assert 0 < client.ttl(key) <= 3601


def test_retry_after_waits_for_the_latest_breached_window() -> None:
    client = fakeredis.FakeRedis()
    limit = AddressLimit("1/minute;1/hour")
    start = 100 * HOUR + 10
    assert hit(limit, client, start) is None
    assert hit(limit, client, start + 1) == 3600 - 11


@pytest.fixture
def limited() -> Runtime:
    settings = make_settings(browser_rate_limit="2/hour")
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys))


def test_a_callback_over_the_limit_is_refused_and_queues_nothing(limited: Runtime) -> None:
    flow = make_flow(limited)
    started = flow.client.get(urlsplit(flow.connect_url()).path)  # the first of two
    state = dict(parse_qsl(urlsplit(started.headers["Location"]).query))["state"]
    assert flow.client.get("/connect/attempts/att_nope").status_code == 404  # the second
    refused = flow.client.get("/oauth/callback", query_string={"state": state, "code": CODE})
    assert refused.status_code == 429
    assert "Too many requests" in refused.get_data(as_text=True)
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["Referrer-Policy"] == "no-referrer"
    assert flow.celery.sent == []
    assert attempts(flow.runtime) == []
    assert list(flow.runtime.redis.scan_iter("attempt-code:*")) == []


def test_without_redis_a_callback_without_state_is_still_a_400() -> None:
    server = fakeredis.FakeServer()
    settings = make_settings(browser_rate_limit="2/hour")
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    rt = Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(server=server),
                 cipher=Cipher(settings.encryption_keys))
    flow = make_flow(rt)
    server.connected = False
    assert [flow.client.get("/oauth/callback").status_code for _ in range(3)] == [400] * 3
