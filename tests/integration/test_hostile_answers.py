"""Hostile token answers against the migrated schema (PostgreSQL when DATABASE_URL names
one), where an overlong `token_type` or an out-of-range expiry would fail the write."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import fakeredis
import pytest

from shared import migrate
from shared.crypto import Cipher
from shared.db import Database
from shared.models import Connection
from shared.runtime import Runtime
from tests.conftest import make_settings
from tests.unit import test_hostile_answers as hostile
from tests.unit.test_hostile_answers import provider_url  # noqa: F401 - the fixture
from worker.refresh import refresh_once

pytestmark = pytest.mark.integration


@pytest.fixture
def world(new_database: Callable[[], str], provider_url: str) -> Iterator[hostile.World]:  # noqa: F811
    url = new_database()
    migrate.upgrade(url)
    settings = make_settings(database_url=url)
    rt = Runtime(settings=settings, db=Database(url, pool_size=2), redis=fakeredis.FakeRedis(),
                 cipher=Cipher(settings.encryption_keys))
    yield hostile.make_world(rt, provider_url)
    rt.db.dispose()


@pytest.mark.parametrize("name", ["token_type_overlong", "expires_in_huge", "expires_in_infinity",
                                  "missing_access_token", "deeply_nested", "html_with_200"])
def test_a_hostile_refresh_answer_is_recorded_on_the_real_schema(name: str, world: hostile.World,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    hostile.test_a_hostile_refresh_answer_is_a_recorded_failure_and_the_stored_token_still_serves(
        name, world, caplog)


@pytest.mark.parametrize("name", ["token_type_overlong", "expires_in_huge", "not_json"])
def test_a_hostile_exchange_answer_fails_the_attempt_on_the_real_schema(name: str, world: hostile.World) -> None:
    hostile.test_a_hostile_exchange_answer_fails_the_attempt_with_a_clear_code(name, world)


def test_a_token_type_as_wide_as_the_column_and_a_ten_year_expiry_are_stored(world: hostile.World) -> None:
    body = json.dumps({"access_token": "at-new", "token_type": "T" * 32, "expires_in": 10 * 365 * 24 * 3600,
                       "refresh_token": hostile.NEW_RT}).encode()
    hostile.serve(hostile.Case(hostile.send(200, body), ""))
    connection_id = hostile.seed_connection(world)
    assert refresh_once(world.rt, connection_id, "never").name == "refreshed"
    with world.rt.db.session() as session:
        connection = session.get(Connection, connection_id)
        assert connection is not None and connection.token_type == "T" * 32
        assert connection.lifetime_seconds == 10 * 365 * 24 * 3600
