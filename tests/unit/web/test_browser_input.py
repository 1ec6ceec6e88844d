"""Hypothesis throws arbitrary query strings at the three browser endpoints (repeated
parameters, huge values, bytes that are not UTF-8, unknown link and attempt ids): the
answer is always a readable 4xx page, never a 5xx, and nothing is stored (no attempt
row, no state or code in Redis, no task sent)."""
from __future__ import annotations

from urllib.parse import quote_from_bytes

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from shared.crypto import Cipher
from shared.db import Database
from shared.models import Base, ConnectAttempt
from shared.runtime import Runtime
from tests.conftest import make_settings
from tests.unit.web.test_connect import Flow, make_flow

NAMES = st.sampled_from([b"state", b"code", b"error", b"iss", b"error_description", b"scope"]) | st.binary(max_size=20)
VALUES = (st.binary(max_size=60) | st.text(max_size=60).map(str.encode)
          | st.integers(1_000, 100_000).map(lambda n: b"A" * n))  # huge
PAIRS = st.lists(st.tuples(NAMES, VALUES), max_size=12)  # names repeat freely


@st.composite
def query_strings(draw: st.DrawFn) -> bytes:
    """A query string as a browser or an attacker may send it: percent-encoded, or raw
    bytes as they came (not UTF-8, stray `%`, `&`, `=` and `;`)."""
    pairs = draw(PAIRS)
    if draw(st.booleans()):
        return b"&".join(quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in pairs)
    return b"&".join(k + b"=" + v for k, v in pairs) + draw(st.sampled_from([b"", b"%", b"%zz", b"&&=", b";a=%ff"]))


IDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300) | st.just("x" * 5000)
SETTINGS = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def flow() -> Flow:
    """A tenant with an integration and one open connect link, whose budget is never spent here."""
    config = make_settings(browser_rate_limit="1000000/hour")
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    flow = make_flow(Runtime(settings=config, db=db, redis=fakeredis.FakeRedis(),
                             cipher=Cipher(config.encryption_keys)))
    flow.connect_url()
    return flow


def _get(flow: Flow, path: str, query: bytes) -> tuple[int, str, str]:
    # As a WSGI server hands them over: the raw bytes of the request line, decoded as latin-1.
    response = flow.client.get(path, environ_overrides={"QUERY_STRING": query.decode("latin-1")})
    return response.status_code, response.mimetype, response.get_data(as_text=True)


def _nothing_stored(flow: Flow) -> None:
    with flow.runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(ConnectAttempt)) == 0
    assert list(flow.runtime.redis.scan_iter("state:*")) == []
    assert list(flow.runtime.redis.scan_iter("attempt-code:*")) == []
    assert flow.celery.sent == []


def _readable_4xx(status: int, mimetype: str, body: str) -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert mimetype == "text/html", (status, mimetype)
    assert "<title>" in body and "Traceback" not in body


@SETTINGS
@given(query=query_strings())
def test_the_callback_answers_a_readable_4xx_to_any_query(flow: Flow, query: bytes) -> None:
    _readable_4xx(*_get(flow, "/oauth/callback", query))
    _nothing_stored(flow)


@SETTINGS
@given(token=IDS, query=query_strings())
def test_an_unknown_link_answers_a_readable_4xx_to_any_query(flow: Flow, token: str, query: bytes) -> None:
    path = "/connect/" + quote_from_bytes(token.encode(), safe="")
    _readable_4xx(*_get(flow, path, query))
    _nothing_stored(flow)


@SETTINGS
@given(attempt_id=IDS, query=query_strings())
def test_an_unknown_attempt_answers_a_readable_4xx_to_any_query(flow: Flow, attempt_id: str, query: bytes) -> None:
    path = "/connect/attempts/" + quote_from_bytes(attempt_id.encode(), safe="")
    _readable_4xx(*_get(flow, path, query))
    _nothing_stored(flow)


@SETTINGS
@given(raw=st.binary(min_size=1, max_size=200))
def test_paths_that_are_not_utf8_answer_a_readable_4xx(flow: Flow, raw: bytes) -> None:
    for prefix in (b"/connect/", b"/connect/attempts/", b"/oauth/callback/"):
        response = flow.client.get("/", environ_overrides={"PATH_INFO": (prefix + raw).decode("latin-1")})
        _readable_4xx(response.status_code, response.mimetype, response.get_data(as_text=True))
    _nothing_stored(flow)


def test_a_query_string_that_is_not_utf8_is_a_400_in_json_under_the_api(flow: Flow) -> None:
    response = flow.api("GET", "/connections", environ_overrides={"QUERY_STRING": b"status=\xff\xfe".decode("latin-1")})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"


def test_a_nul_character_anywhere_is_refused_before_it_reaches_the_database(flow: Flow) -> None:
    for path in ("/connect/a%00b", "/connect/attempts/a%00b", "/oauth/callback?state=a%00b"):
        response = flow.client.get(path)
        assert response.status_code == 400 and response.mimetype == "text/html", path
    for path in ("/connections/a%00b", "/connections?end_user_id=a%00b", "/integrations/a%00b"):
        response = flow.api("GET", path)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request", path
    body = {"provider": "sandbox", "client_id": "a\x00b", "client_secret": "x", "scopes": ["ok"]}
    refused = flow.api("POST", "/integrations", json=body)
    assert refused.status_code == 422 and refused.get_json()["error"]["details"][0]["field"] == "client_id"
    nested = flow.api("POST", "/integrations", json={**body, "client_id": "c", "extra_authorize_params": {"a": "\x00"}})
    assert nested.status_code == 422
    _nothing_stored(flow)
