"""Settings and stores shared by the unit and integration suites."""
from __future__ import annotations

from datetime import timedelta

import fakeredis
import pytest
from sqlalchemy.orm import Session

from shared.config import Settings, load_settings
from shared.crypto import Cipher, new_fernet_key
from shared.db import Database
from shared.models import Base, Connection, Integration, Tenant, new_id, utcnow
from shared.runtime import Runtime


def make_settings(**overrides: object) -> Settings:
    """Settings for a test, independent of the caller's environment."""
    values: dict[str, object] = {
        "secret_key": "test-secret-key-0123456789abcdef",
        "token_encryption_keys": new_fernet_key(),
        "public_base_url": "http://127.0.0.1:8000",
        "database_url": "sqlite://",
        "sandbox_provider": True,
        "allow_private_provider_urls": True,  # unit tests never resolve names; test_egress checks the rule
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


def seed_integration(session: Session) -> tuple[Tenant, Integration]:
    """A new tenant with one oauth2 integration, flushed in `session` (ids assigned)."""
    tenant = Tenant(name="seeded", api_key_hash=new_id("hash"))
    session.add(tenant)
    session.flush()
    integration = Integration(tenant_id=tenant.id, provider="oauth2", client_id="c", client_secret_enc="x",
                              scopes=[], authorize_url="https://idp.example/a", token_url="https://idp.example/t")
    session.add(integration)
    session.flush()
    return tenant, integration


def seed_connections(rt: Runtime, expiring_in: list[int | None], status: str = "active",
                     lifetime: int = 3600) -> list[str]:
    """Connections of a new tenant whose tokens expire in the given seconds (None: never)."""
    now = utcnow()
    with rt.db.session() as session:
        tenant, integration = seed_integration(session)
        rows = [Connection(tenant_id=tenant.id, integration_id=integration.id, end_user_id="u", scopes=[],
                           status=status, lifetime_seconds=lifetime,
                           expires_at=now + timedelta(seconds=s) if s is not None else None) for s in expiring_in]
        session.add_all(rows)
    return [row.id for row in rows]
