"""Settings and stores shared by the unit and integration suites."""
from __future__ import annotations

import os

import fakeredis
import pytest

from shared.config import Settings, load_settings
from shared.crypto import Cipher, new_fernet_key
from shared.db import Database
from shared.models import Base
from shared.runtime import Runtime

# The worker modules read their settings on import; give unit tests harmless ones.
# Integration tests pass explicit settings to every process they start.
os.environ.setdefault("SECRET_KEY", "unit-test-secret-key-0123456789")
os.environ.setdefault("TOKEN_ENCRYPTION_KEYS", new_fernet_key())


def make_settings(**overrides: object) -> Settings:
    """Settings for a test, independent of the caller's environment."""
    values: dict[str, object] = {
        "secret_key": "test-secret-key-0123456789abcdef",
        "token_encryption_keys": new_fernet_key(),
        "public_base_url": "http://127.0.0.1:8000",
        "database_url": "sqlite://",
        "sandbox_provider": True,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def memory_runtime() -> Runtime:
    """A runtime over an in-memory SQLite database and fakeredis, for fast unit tests."""
    settings = make_settings()
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    return Runtime(settings=settings, db=db, redis=fakeredis.FakeRedis(), cipher=Cipher(settings.encryption_keys))
