"""Fixtures that bring up the real system once per test session."""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from devstack.local_redis import ensure_redis
from shared import migrate
from shared.runtime import build_runtime
from tests.conftest import make_settings
from tests.integration.stack import Stack, free_port


def _redis_databases(spec: str) -> range:
    """The Redis databases test stacks may use, from "first-last": two suites that share
    one Redis server can run at once when each has a range of its own."""
    first, _, last = spec.partition("-")
    return range(int(first), int(last or first) + 1)


TEST_REDIS_DBS = _redis_databases(os.environ.get("TEST_REDIS_DBS", "8-15"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL's server, or the fallback; test stacks use its databases TEST_REDIS_DBS."""
    local = ensure_redis(os.environ.get("REDIS_URL"))
    try:
        yield local.url
    finally:
        local.stop()


@pytest.fixture(scope="session")
def new_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], str]]:
    """Makes empty databases of the tests' own: on DATABASE_URL's PostgreSQL server when
    it names one (dropped at the end), else SQLite files."""
    given = os.environ.get("DATABASE_URL", "")
    made: list[str] = []
    admin = sa.create_engine(given, isolation_level="AUTOCOMMIT") if given.startswith("postgresql") else None

    def new() -> str:
        if admin is None:
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        name = f"oauth_test_{secrets.token_hex(4)}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(given).set(database=name).render_as_string(hide_password=False)

    try:
        yield new
    finally:
        if admin is not None:
            with admin.connect() as connection:
                for name in made:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def stack_env(settings_overrides: dict[str, str]) -> dict[str, str]:
    """The environment of the child processes: this one's, minus settings, plus the given ones."""
    keep = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "TOKEN_ENCRYPTION_KEYS", "PUBLIC_BASE_URL"}}
    return {**keep, **settings_overrides, "PYTHONUNBUFFERED": "1"}


StackFactory = Callable[..., Stack]


class StackBuilder:
    """Builds running systems; each gets a database and a Redis database of its own, so
    its workers and its sweep never touch another system's work. A stopped system gives
    its Redis database back, flushed, for the next one."""

    def __init__(self, redis_url: str, new_database: Callable[[], str], logs: pytest.TempPathFactory) -> None:
        self.redis_url = redis_url
        self.new_database = new_database
        self.logs = logs
        self.free = list(TEST_REDIS_DBS)
        self.numbers: dict[int, int] = {}

    def build(self, workers: int = 2, web_threads: int = 128, **settings_env: str) -> Stack:
        """A running system: web and `workers` Celery workers; extra settings go in as environment."""
        assert self.free, "out of Redis databases for test stacks: stop some first"
        number = self.free.pop(0)
        own_redis = urlunsplit(urlsplit(self.redis_url)._replace(path=f"/{number}"))
        database_url = self.new_database()
        migrate.upgrade(database_url)
        base_url = f"http://127.0.0.1:{free_port()}"
        settings = make_settings(database_url=database_url, redis_url=own_redis, public_base_url=base_url)
        env = stack_env({
            "DATABASE_URL": database_url,
            "REDIS_URL": own_redis,
            "SECRET_KEY": settings.secret_key,
            "TOKEN_ENCRYPTION_KEYS": settings.token_encryption_keys,
            "PUBLIC_BASE_URL": base_url,
            "SANDBOX_PROVIDER": "1",
            "HTTP_TIMEOUT_SECONDS": "5",
            # Every test browses from 127.0.0.1 and polls fast; tests of the limits set their own.
            "BROWSER_RATE_LIMIT": "100000/minute",
            "API_RATE_LIMIT": "1000000/minute",
            **settings_env,
        })
        runtime = build_runtime(settings)
        runtime.redis.flushdb()
        stack = Stack(env=env, runtime=runtime, logdir=Path(self.logs.mktemp("logs")), base_url=base_url)
        self.numbers[id(stack)] = number
        stack.start_web(threads=web_threads)
        for n in range(workers):
            stack.start_worker(f"w{n + 1}")
        return stack

    def release(self, stack: Stack) -> None:
        """Stop the system's processes and give its Redis database back."""
        stack.stop_all()
        stack.runtime.redis.flushdb()
        stack.runtime.db.dispose()
        self.free.append(self.numbers.pop(id(stack)))


@pytest.fixture(scope="session")
def stack_builder(redis_url: str, new_database: Callable[[], str],
                  tmp_path_factory: pytest.TempPathFactory) -> StackBuilder:
    """The session's builder of running systems."""
    return StackBuilder(redis_url, new_database, tmp_path_factory)


@pytest.fixture(scope="module")
def stack_factory(stack_builder: StackBuilder) -> Iterator[StackFactory]:
    """Builds running systems for one test module; they are stopped when it ends."""
    built: list[Stack] = []

    def build(workers: int = 2, web_threads: int = 128, **settings_env: str) -> Stack:
        stack = stack_builder.build(workers, web_threads, **settings_env)
        built.append(stack)
        return stack

    try:
        yield build
    finally:
        for stack in built:
            stack_builder.release(stack)


@pytest.fixture(scope="session")
def stack(stack_builder: StackBuilder) -> Iterator[Stack]:
    """Web (gunicorn) and two Celery workers, shared by the tests that need no special settings."""
    built = stack_builder.build()
    try:
        yield built
    finally:
        stack_builder.release(built)
