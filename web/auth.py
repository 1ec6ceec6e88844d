"""Bearer API keys: every API call belongs to exactly one tenant."""
from __future__ import annotations

from flask import g, request

from shared import logs
from shared.tenants import tenant_for_key
from web import runtime
from web.errors import ApiError


def authenticate() -> None:
    """Resolve `Authorization: Bearer <api_key>` to `g.tenant_id`, or answer 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send the API key as 'Authorization: Bearer <api_key>'",
                       headers={"WWW-Authenticate": 'Bearer realm="api"'})
    with runtime().db.session() as session:
        tenant = tenant_for_key(session, key.strip())
        if tenant is None:
            raise ApiError(401, "unauthorized", "unknown API key",
                           headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'})
        g.tenant_id = tenant.id
    logs.bind(tenant_id=g.tenant_id)
