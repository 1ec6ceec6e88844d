"""The long-lived objects a process builds once from its settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from shared.config import Settings
from shared.crypto import Cipher
from shared.db import Database
from shared.nonces import CodeStore, StateStore
from shared.queue import build_celery
from shared.webhooks import send_after_commit


@dataclass
class Runtime:
    """Settings, database, Redis, cipher and Celery client of one process."""

    settings: Settings
    db: Database
    redis: redis.Redis
    cipher: Cipher
    celery: Celery[Any] = None  # type: ignore[assignment]  # built from the settings when not given
    states: StateStore = field(init=False)
    codes: CodeStore = field(init=False)

    def __post_init__(self) -> None:
        if self.celery is None:
            self.celery = build_celery(self.settings)
        self.states = StateStore(self.redis, self.cipher)
        self.codes = CodeStore(self.redis, self.cipher)
        send_after_commit(self.db.sessions, self.redis, self.celery)


def build_runtime(settings: Settings, celery: Celery[Any] | None = None) -> Runtime:
    """Connect to the database and Redis named by the settings; a process that has its
    Celery app already (the worker) passes it in."""
    return Runtime(
        settings=settings,
        db=Database(settings.database_url, settings.db_pool_size, settings.db_max_overflow),
        redis=redis.Redis.from_url(settings.redis_url, health_check_interval=30),
        cipher=Cipher(settings.encryption_keys),
        celery=celery,  # type: ignore[arg-type]
    )
