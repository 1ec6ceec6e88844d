"""Fixtures that bring up the real system once per test session."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shared import migrate
from shared.local_redis import ensure_redis
from shared.runtime import build_runtime
from tests.conftest import make_settings
from tests.integration.stack import Stack, free_port

TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of the tests' own: REDIS_URL's server (or the fallback), database TEST_REDIS_DB."""
    local = ensure_redis(os.environ.get("REDIS_URL"))
    url = urlunsplit(urlsplit(local.url)._replace(path=f"/{TEST_REDIS_DB}"))
    try:
        yield url
    finally:
        local.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DATABASE_URL's PostgreSQL server with a fresh database of the tests' own, else a SQLite file."""
    given = os.environ.get("DATABASE_URL", "")
    if not given.startswith("postgresql"):
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    name = f"oauth_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(given, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(given).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def stack_env(settings_overrides: dict[str, str]) -> dict[str, str]:
    """The environment of the child processes: this one's, minus settings, plus the given ones."""
    keep = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "TOKEN_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"}}
    return {**keep, **settings_overrides, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def stack(redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Web (gunicorn) and two Celery workers over the tests' Redis database and database."""
    base_url = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(database_url=database_url, redis_url=redis_url, public_base_url=base_url)
    env = stack_env({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": settings.secret_key,
        "TOKEN_ENCRYPTION_KEYS": settings.token_encryption_keys,
        "PUBLIC_BASE_URL": base_url,
        "SANDBOX_PROVIDER": "1",
        "HTTP_TIMEOUT_SECONDS": "5",
    })
    migrate.upgrade(database_url)
    runtime = build_runtime(settings)
    runtime.redis.flushdb()
    stack = Stack(env=env, runtime=runtime, logdir=Path(tmp_path_factory.mktemp("logs")), base_url=base_url)
    try:
        stack.start_web()
        stack.start_worker("w1")
        stack.start_worker("w2")
        yield stack
    finally:
        stack.stop_all()
        runtime.db.dispose()
