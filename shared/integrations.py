"""What the flow and the token calls need of an integration, cached per process.

Integrations cannot be edited, so a cached view is never stale; the cache is
short-lived anyway, and keyed by the ciphertext for the client secret."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Connection, bindparam, select

from shared.config import Settings
from shared.crypto import Cipher
from shared.egress import Rules
from shared.models import Integration
from shared.providers import OAuthClient, default_urls
from shared.runtime import Runtime

CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class AuthorizeTarget:
    """The public half of an integration: where and how to send the browser."""

    id: str
    authorize_url: str
    client_id: str
    scopes: tuple[str, ...]
    pkce: bool
    extra_authorize_params: tuple[tuple[str, str], ...]
    issuer: str | None


_integrations = Integration.__table__
_TARGET = select(_integrations.c.id, _integrations.c.authorize_url, _integrations.c.client_id,
                 _integrations.c.scopes, _integrations.c.pkce, _integrations.c.extra_authorize_params,
                 _integrations.c.issuer).where(_integrations.c.id == bindparam("id"))


class TargetCache:
    """Integration id → AuthorizeTarget, for CACHE_SECONDS."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, AuthorizeTarget]] = {}
        self._lock = threading.Lock()

    def get(self, connection: Connection, integration_id: str) -> AuthorizeTarget | None:
        """The cached view, or one read now."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(integration_id)
        if entry and entry[0] > now:
            return entry[1]
        row = connection.execute(_TARGET, {"id": integration_id}).first()
        if row is None:
            return None
        target = AuthorizeTarget(
            id=row.id, authorize_url=row.authorize_url, client_id=row.client_id, scopes=tuple(row.scopes),
            pkce=row.pkce, extra_authorize_params=tuple(sorted(row.extra_authorize_params.items())),
            issuer=row.issuer)
        with self._lock:
            self._entries[integration_id] = (now + CACHE_SECONDS, target)
        return target


@lru_cache(maxsize=4096)
def _client(cipher: Cipher, client_id: str, secret_enc: str, token_url: str, auth_method: str,
            rules: Rules) -> OAuthClient:
    return OAuthClient(client_id=client_id, client_secret=cipher.decrypt(secret_enc), token_url=token_url,
                       auth_method=auth_method, rules=rules)


def egress_rules(settings: Settings, provider: str) -> Rules:
    """What an integration's server-side URLs may reach. The built-in sandbox is this
    service itself (its URLs are always its own); every other provider needs https and
    public addresses, unless private provider URLs are allowed (make dev, on-premises)."""
    return Rules.for_tenant_urls(provider == "sandbox" or settings.allow_private_provider_urls)


def server_urls(settings: Settings, integration: Integration) -> tuple[str, str | None]:
    """The token and revocation URLs the workers call. A sandbox integration always
    calls the sandbox's own, whatever its row says: it is allowed private addresses
    because those are this service's, so it must never be pointed anywhere else."""
    if integration.provider == "sandbox":
        own = default_urls("sandbox", settings.public_base_url)
        return own["token_url"], own["revoke_url"]
    return integration.token_url, integration.revoke_url


def oauth_client(rt: Runtime, integration: Integration) -> OAuthClient:
    """The token-endpoint client of an integration, its secret decrypted in memory only."""
    token_url, _ = server_urls(rt.settings, integration)
    return _client(rt.cipher, integration.client_id, integration.client_secret_enc, token_url,
                   integration.token_auth_method, egress_rules(rt.settings, integration.provider))
