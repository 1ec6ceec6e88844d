"""Data for the refresh benchmarks: a sandbox client, real sandbox grants minted in bulk, and
connections inserted directly with those grants' tokens encrypted.

Grants are minted through the sandbox's own store functions (`save_code` then `exchange_code`,
the same atomic steps its token endpoint runs for an authorization-code grant), so each
refresh token is one the sandbox's token endpoint accepts exactly once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import insert

from shared.crypto import new_secret
from shared.models import Connection, Integration, new_id, utcnow
from shared.runtime import Runtime
from shared.tenants import create_tenant
from web import sandbox_store as store

SCOPES = ["contact:read", "message:write"]


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str


class Sandbox:
    """The sandbox provider running at `base`, seen from the bench."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token_url = f"{self.base}/sandbox/oauth/token"

    def client(self) -> dict[str, Any]:
        response = requests.post(f"{self.base}/sandbox/clients", json={}, timeout=10)
        response.raise_for_status()
        return response.json()

    def knobs(self, client_id: str, **knobs: Any) -> None:
        response = requests.put(f"{self.base}/sandbox/admin/clients/{client_id}/knobs", json=knobs, timeout=10)
        response.raise_for_status()

    def stats(self, client_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.base}/sandbox/admin/clients/{client_id}/stats", timeout=10)
        response.raise_for_status()
        return response.json()


def mint_grants(rt: Runtime, client: dict[str, Any], count: int, threads: int = 8) -> list[Grant]:
    """`count` live grants of the client, each with its own refresh token."""
    redirect_uri = client["redirect_uris"][0]
    ttl = 3600

    def mint(_: int) -> Grant:
        code, access, refresh = new_secret(32), new_secret(32), new_secret(32)
        store.save_code(rt.redis, code, client_id=client["client_id"], redirect_uri=redirect_uri,
                        challenge="bench", scope=" ".join(SCOPES), workspace="Bench workspace")
        ok, why = store.exchange_code(rt.redis, code, client_id=client["client_id"], redirect_uri=redirect_uri,
                                      challenge="bench", access_token=access, refresh_token=refresh,
                                      exp=int(time.time()) + ttl, ttl=ttl)
        if not ok:
            raise RuntimeError(f"minting a sandbox grant failed: {why}")
        return Grant(access, refresh)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(mint, range(count), chunksize=256))


def tenant_and_integration(rt: Runtime, sandbox: Sandbox, client: dict[str, Any]) -> tuple[str, str, str]:
    """A tenant and its sandbox integration whose token URL is the sandbox at `sandbox.base`:
    (tenant id, integration id, the tenant's API key)."""
    with rt.db.session() as session:
        tenant, api_key = create_tenant(session, "bench")
        integration = Integration(
            tenant_id=tenant.id, provider="sandbox", client_id=client["client_id"],
            client_secret_enc=rt.cipher.encrypt(client["client_secret"]), scopes=SCOPES,
            authorize_url=f"{sandbox.base}/sandbox/oauth/authorize", token_url=sandbox.token_url,
            revoke_url=f"{sandbox.base}/sandbox/oauth/revoke", issuer=f"{sandbox.base}/sandbox",
            token_auth_method="client_secret_basic", pkce=True)
        session.add(integration)
        session.flush()
        return tenant.id, integration.id, api_key


def insert_connections(rt: Runtime, tenant_id: str, integration_id: str, grants: list[Grant],
                       expires_at: datetime, lifetime_seconds: int = 3600) -> list[str]:
    """One active connection per grant, tokens encrypted, expiring at `expires_at`; answers the ids."""
    now = utcnow()
    rows: list[dict[str, Any]]
    rows = [{"id": new_id("conn"), "tenant_id": tenant_id, "integration_id": integration_id,
             "end_user_id": f"bench-user-{i}", "status": "active", "scopes": SCOPES,
             "access_token_enc": rt.cipher.encrypt(grant.access_token),
             "refresh_token_enc": rt.cipher.encrypt(grant.refresh_token), "token_type": "Bearer",
             "expires_at": expires_at, "lifetime_seconds": lifetime_seconds, "refresh_failures": 0,
             "version": 1, "created_at": now - timedelta(hours=1), "updated_at": now - timedelta(hours=1)}
            for i, grant in enumerate(grants)]
    with rt.db.session() as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Connection), rows[start:start + 2000])
    return [row["id"] for row in rows]
