"""Tenants, their API keys, and re-encryption of stored secrets."""
from __future__ import annotations

import redis
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from shared.crypto import Cipher, digest, new_secret
from shared.db import Database, rowcount
from shared.models import Connection, Integration, Tenant

API_KEY_PREFIX = "ok_live_"
# A tenant's id is published here whenever its API key changes, so that every web
# process forgets the old key at once.
API_KEYS_CHANNEL = "api-key-updates"


class TenantNotFound(LookupError):
    """No tenant, or more than one, answers to the name given."""


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """Create a tenant; return it with its API key, which is stored only hashed."""
    api_key = API_KEY_PREFIX + new_secret(32)
    tenant = Tenant(name=name, api_key_hash=digest(api_key))
    session.add(tenant)
    session.flush()
    return tenant, api_key


def find_tenant(session: Session, name_or_id: str) -> Tenant:
    """The one tenant with this id, or else this name; TenantNotFound when none or several."""
    tenants = session.scalars(select(Tenant).where(or_(Tenant.id == name_or_id, Tenant.name == name_or_id))
                              .order_by(Tenant.created_at)).all()
    exact = [tenant for tenant in tenants if tenant.id == name_or_id]
    if exact:
        return exact[0]
    if not tenants:
        raise TenantNotFound(f"no tenant is named {name_or_id!r}")
    if len(tenants) > 1:
        ids = ", ".join(tenant.id for tenant in tenants)
        raise TenantNotFound(f"several tenants are named {name_or_id!r} ({ids}); give the id instead")
    return tenants[0]


def rotate_api_key(session: Session, tenant: Tenant) -> str:
    """Give the tenant a new API key (stored only hashed) and return it; the old one
    stops matching once this commits. Announce it with `announce_key_change`."""
    api_key = API_KEY_PREFIX + new_secret(32)
    tenant.api_key_hash = digest(api_key)
    session.flush()
    return api_key


def announce_key_change(client: redis.Redis, tenant_id: str) -> None:
    """Tell every web process that this tenant's API key changed."""
    client.publish(API_KEYS_CHANNEL, tenant_id)


def tenant_for_key(session: Session, api_key: str) -> Tenant | None:
    """The tenant whose key this is; the lookup is by hash, never by the key itself."""
    return session.scalar(select(Tenant).where(Tenant.api_key_hash == digest(api_key)))


# Rows re-encrypted per committed batch by `rotate_keys`.
ROTATE_BATCH = 200

_ENCRYPTED_COLUMNS = (
    (Tenant, ("webhook_secret_enc",)),
    (Integration, ("client_secret_enc",)),
    (Connection, ("access_token_enc", "refresh_token_enc")),
)


def rotate_keys(db: Database, cipher: Cipher, batch: int = ROTATE_BATCH) -> int:
    """Re-encrypt every stored secret under the newest key; return how many values changed.

    Rows are read in keyset pages by id; a page's new values are computed before its
    write transaction opens, and each page is written in one statement and committed
    on its own, so no row stays locked for longer than one small batch's write. Each
    write is conditional on the ciphertext it read, so a refresh that lands meanwhile
    is never overwritten with the older token. Values under the newest key already
    are skipped, so running it again is cheap and prints 0."""
    count = 0
    for model, columns in _ENCRYPTED_COLUMNS:
        table = model.__table__
        for column_name in columns:
            column = table.c[column_name]
            write = (update(table).where(table.c.id == bindparam("row_id"), column == bindparam("old"))
                     .values({column_name: bindparam("new")}))
            after = ""
            while True:
                with db.session() as session:
                    rows = session.execute(select(table.c.id, column).where(column.is_not(None), table.c.id > after)
                                           .order_by(table.c.id).limit(batch)).all()
                changes = [{"row_id": row_id, "old": old, "new": cipher.rotate(old)}
                           for row_id, old in rows if not cipher.is_newest(old)]
                if changes:
                    with db.session() as session:
                        count += rowcount(session.execute(write, changes))
                if len(rows) < batch:
                    break
                after = rows[-1][0]
    return count
