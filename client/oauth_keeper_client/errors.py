"""The typed errors of the client: one base, the service's answers, respond.io's answers."""
from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Any error of this client."""


class KeeperError(ClientError):
    """An error answer of oauth-keeper's API: `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class NotFound(KeeperError):
    """No such resource for this tenant (404)."""


class NeedsReauth(KeeperError):
    """The connection needs its end user to authorize again: send them through a new connect link."""


class Revoked(KeeperError):
    """The connection is revoked: it gives no token any more."""


class ServiceUnavailable(KeeperError):
    """The service did not answer in time (503, or no answer at all); try again after `retry_after`."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class RateLimited(ClientError):
    """Too many requests (429 or 449), from the service or from respond.io beyond the waits allowed."""

    def __init__(self, message: str, retry_after: float | None, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after, self.status = retry_after, status


class RespondIOError(ClientError):
    """An error answer of respond.io's API (after the retries the policy allows)."""

    def __init__(self, connection_id: str, status: int, body: Any, message: str | None = None) -> None:
        super().__init__(message or f"connection {connection_id}: respond.io answered {status}")
        self.connection_id, self.status, self.body = connection_id, status, body


class TokenRejected(RespondIOError):
    """respond.io answered 401 again with a freshly refreshed token."""
