"""A connection's access token kept in memory, and the single refresh that threads share."""
from __future__ import annotations

import threading
import weakref
from typing import Protocol

from oauth_keeper_client.errors import ClientError, NeedsReauth, Revoked
from oauth_keeper_client.models import Token


class TokenSource(Protocol):
    """Where tokens come from: `Keeper`, or any object with these three methods."""

    def token(self, connection_id: str) -> Token:
        """The current token (refreshed by the service when due)."""

    def refresh(self, connection_id: str) -> Token:
        """A new token now (the service's single flight shares it between callers)."""

    def api_base_url(self, connection_id: str) -> str | None:
        """The API base URL of the connection's integration."""


class TokenCache:
    """One connection's token, fetched when missing or due, replaced once per rejection.

    Threads that meet a 401 with the same token share one refresh: the first one under the
    lock refreshes, the others find the token already replaced (or the same final failure)."""

    def __init__(self, source: TokenSource, connection_id: str, margin_seconds: float = 60.0) -> None:
        self.source, self.connection_id, self.margin_seconds = source, connection_id, margin_seconds
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._failed: tuple[str, ClientError] | None = None  # (rejected access token, what its refresh raised)

    def current(self) -> Token:
        """The kept token (read without waiting for the lock), or a new one from the source when there is
        none or it is due."""
        token = self._token
        if token is not None and not token.is_due(self.margin_seconds):
            return token
        with self._lock:
            if self._token is None or self._token.is_due(self.margin_seconds):
                self._token = self.source.token(self.connection_id)
            return self._token

    def replace(self, rejected: Token) -> Token:
        """A token other than the rejected one: refreshed now, unless another thread already did."""
        with self._lock:
            if self._token is not None and self._token.access_token != rejected.access_token:
                return self._token
            if self._failed is not None and self._failed[0] == rejected.access_token:
                raise self._failed[1]
            try:
                self._token = self.source.refresh(self.connection_id)
            except (NeedsReauth, Revoked) as error:  # final until the end user connects again
                self._token, self._failed = None, (rejected.access_token, error)
                raise
            except ClientError:
                self._token = None  # transient: the next holder of the rejected token tries again
                raise
            self._failed = None
            return self._token


_caches: weakref.WeakKeyDictionary[TokenSource, dict[str, TokenCache]] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def shared_cache(source: TokenSource, connection_id: str, margin_seconds: float = 60.0) -> TokenCache:
    """The process's one cache of this source's connection, so that every client of it shares its refresh."""
    with _caches_lock:
        per_source = _caches.setdefault(source, {})
        if connection_id not in per_source:
            per_source[connection_id] = TokenCache(source, connection_id, margin_seconds)
        return per_source[connection_id]
