"""Bearer API keys: every API call belongs to exactly one tenant.

Keys are looked up by hash, and the hash → tenant answer is kept in the process's
cache until the tenant's keys are announced as changed (or a few seconds pass)."""
from __future__ import annotations

from flask import current_app, g, request
from sqlalchemy import bindparam, select

from shared import logs
from shared.crypto import digest
from shared.models import Tenant
from web import caches, runtime
from web.errors import ApiError

_TENANT_OF_KEY = select(Tenant.id).where(Tenant.api_key_hash == bindparam("key_hash"))


def tenant_of_key(api_key: str) -> str | None:
    """The id of the tenant whose key this is: from the cache, else from the database."""
    updates = current_app.extensions["updates"]
    key_hash = digest(api_key)
    tenant_id: str | None = updates.api_keys.get(key_hash)
    if tenant_id is None:
        updates.start()
        read_at = caches.now()  # before the read: a change announced after this drops it
        with runtime().db.engine.connect() as db:
            tenant_id = db.execute(_TENANT_OF_KEY, {"key_hash": key_hash}).scalar()
        if tenant_id is not None:
            updates.api_keys.put(key_hash, tenant_id, tenant_id, read_at)
    return tenant_id


def authenticate() -> None:
    """Resolve `Authorization: Bearer <api_key>` to `g.tenant_id`, or answer 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send the API key as 'Authorization: Bearer <api_key>'",
                       headers={"WWW-Authenticate": 'Bearer realm="api"'})
    tenant_id = tenant_of_key(key.strip())
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "unknown API key",
                       headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'})
    g.tenant_id = tenant_id
    logs.bind(tenant_id=tenant_id)
