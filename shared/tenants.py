"""Tenants, their API keys, and re-encryption of stored secrets."""
from __future__ import annotations

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.crypto import Cipher, digest, new_secret
from shared.models import Connection, Integration, Tenant

API_KEY_PREFIX = "ok_live_"
# A tenant id published here drops that tenant's API keys from every web process's cache.
API_KEYS_CHANNEL = "api-key-updates"


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant; return it with its API key, which is stored only hashed."""
    api_key = API_KEY_PREFIX + new_secret(32)
    tenant = Tenant(name=name, api_key_hash=digest(api_key))
    session.add(tenant)
    session.flush()
    return tenant, api_key


def tenant_for_key(session: Session, api_key: str) -> Tenant | None:
    """The tenant whose key this is; the lookup is by hash, never by the key itself."""
    return session.scalar(select(Tenant).where(Tenant.api_key_hash == digest(api_key)))


def announce_api_keys(client: redis.Redis, tenant_id: str) -> None:
    """Tell every web process that the tenant's API keys changed (after the commit)."""
    client.publish(API_KEYS_CHANNEL, tenant_id)


_ENCRYPTED_COLUMNS = (
    (Tenant, ("webhook_secret_enc",)),
    (Integration, ("client_secret_enc",)),
    (Connection, ("access_token_enc", "refresh_token_enc")),
)


def rotate_keys(session: Session, cipher: Cipher) -> int:
    """Re-encrypt every stored secret under the newest key; return how many values changed.

    Each write is conditional on the ciphertext it read, so a refresh that lands
    meanwhile is never overwritten with the older token."""
    count = 0
    for model, columns in _ENCRYPTED_COLUMNS:
        for column_name in columns:
            column = getattr(model, column_name)
            rows = session.execute(select(model.id, column).where(column.is_not(None))).all()
            for row_id, old in rows:
                result = session.execute(
                    update(model).where(model.id == row_id, column == old).values({column_name: cipher.rotate(old)})
                )
                count += result.rowcount
    return count
